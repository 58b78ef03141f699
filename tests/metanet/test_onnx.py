"""The ONNX export (model/onnx_graphs.py) on ONNX Runtime against the torch model, on real Omniglot tasks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model.checkpoint import load_checkpoint
from model.inference import MetaNetPredictor
from model.meta_info import preprocess_gradient
from model.onnx_graphs import export_model, graph_paths
from testkit import CHECKPOINT
from training.export import verify


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    model, _ = load_checkpoint(CHECKPOINT)
    out = tmp_path_factory.mktemp("onnx") / "omniglot-standard.onnx"
    export_model(model, out)
    return out


@pytest.fixture(scope="module")
def predictors(exported) -> tuple[MetaNetPredictor, MetaNetPredictor]:
    model, _ = load_checkpoint(CHECKPOINT)
    return MetaNetPredictor(model), MetaNetPredictor(model, backend="onnxruntime", onnx_path=exported)


@pytest.fixture(scope="module")
def episode(evaluation_characters):
    """40 unseen characters: one drawing each to teach, another person's drawing of each to classify."""
    chars = np.random.default_rng(3).choice(len(evaluation_characters.names), 40, replace=False)
    images = evaluation_characters.images[chars]
    return images[:, 0], [f"char{i}" for i in range(40)], images[:, 1]


def test_every_graph_passes_the_checker_at_opset_18(exported):
    for path in graph_paths(exported).values():
        onnx.checker.check_model(str(path), full_check=True)
        graph = onnx.load(str(path))
        assert {o.domain: o.version for o in graph.opset_import}[""] == 18


def test_memory_tensors_are_inputs_with_dynamic_sizes(exported):
    inputs = {i.name: i.shape for i in ort.InferenceSession(str(exported)).get_inputs()}
    assert inputs["images"] == ["queries", 1, 28, 28]
    assert inputs["fast_weights"][0] == inputs["attention"][0] == "queries"  # W* read before the graph
    assert inputs["attention"][1] == inputs["fast_out"][0] == inputs["labels"][0] == "examples"
    assert inputs["label_codes"] == ["labels"]


def test_parity_holds_with_the_default_int8_storage(predictors):
    reference, onnx_runtime = predictors
    assert reference.storage == onnx_runtime.storage == "int8"


def _assert_same(expected: torch.Tensor, got: torch.Tensor) -> None:
    assert (expected - got).abs().max() < 1e-5
    assert torch.equal(expected.argmax(-1), got.argmax(-1))


def test_dense_attention_matches_torch_on_a_20_way_task(predictors, episode):
    reference, onnx_runtime = predictors
    support, labels, queries = episode
    task = reference.build_memory(support[:20], labels[:20])
    expected = reference.classify(task, queries[:20])
    _assert_same(expected, onnx_runtime.classify(task, queries[:20]))
    assert (expected.argmax(-1) == torch.arange(20)).float().mean() >= 0.75
    _assert_same(expected[:1], onnx_runtime.classify(task, queries[:1]))  # a batch of one query


def test_a_one_example_task_and_a_grown_task_match_torch(predictors, episode):
    reference, onnx_runtime = predictors
    support, labels, queries = episode
    task = reference.build_memory(support[:1], labels[:1])
    _assert_same(reference.classify(task, queries[:3]), onnx_runtime.classify(task, queries[:3]))
    task = reference.extend_memory(task, support[1:7], labels[1:7])  # Q* refreshed, d from its state
    _assert_same(reference.classify(task, queries[:7]), onnx_runtime.classify(task, queries[:7]))


def test_top_k_attention_matches_torch_on_a_40_way_task(predictors, episode):
    reference, onnx_runtime = predictors
    support, labels, queries = episode
    task = reference.build_memory(support, labels)
    keys = onnx_runtime.embed_queries(task, queries)
    torch.testing.assert_close(keys, reference.embed_queries(task, queries), atol=1e-5, rtol=1e-4)
    top = (keys @ task.keys.T).topk(16)
    neighbors = (top.indices, top.values)
    expected = reference.classify(task, queries, neighbors)
    _assert_same(expected, onnx_runtime.classify(task, queries, neighbors))
    assert (expected.argmax(-1) == torch.arange(40)).float().mean() >= 0.6


def test_a_batch_of_tasks_matches_torch(predictors, episode):
    reference, onnx_runtime = predictors
    support, labels, queries = episode
    items = [
        (reference.build_memory(support[:5], labels[:5]), queries[:2]),
        (reference.build_memory(support[5:25], labels[5:25]), queries[5:25]),
    ]
    for expected, got in zip(
        reference.classify_batch(items), onnx_runtime.classify_batch(items), strict=True
    ):
        _assert_same(expected.probabilities, got.probabilities)
        torch.testing.assert_close(got.novelty, expected.novelty, atol=1e-5, rtol=1e-4)


def test_m_and_d_graphs_give_the_model_fast_weights(exported):
    model, _ = load_checkpoint(CHECKPOINT)
    paths = graph_paths(exported)
    gradients = torch.randn(3, 1000) * torch.logspace(-9, 0, 1000)  # the range real gradients span
    m = ort.InferenceSession(str(paths["m"]))
    conv, fc = m.run(None, {"conv_gradients": gradients.numpy(), "fc_gradients": gradients[:2].numpy()})
    expected = model._m({"conv": gradients, "fc": gradients[:2]})
    np.testing.assert_allclose(conv, expected["conv"].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(fc, expected["fc"].detach().numpy(), atol=1e-6)

    d, hidden = ort.InferenceSession(str(paths["d"])), model.config.meta_hidden
    state = (torch.zeros(1000, hidden), torch.zeros(1000, hidden))
    for g in gradients:  # three steps, as d reads three examples
        h, c, fast = d.run(
            None, {"gradient": g.numpy(), "hidden": state[0].numpy(), "cell": state[1].numpy()}
        )
        with torch.no_grad():
            state = model.d_rep.step(preprocess_gradient(g, model.config.grad_clip_k), state)
            np.testing.assert_allclose(h, state[0].numpy(), atol=1e-6)
            np.testing.assert_allclose(fast, model.d_rep.readout(state).numpy(), atol=1e-6)
        state = (torch.from_numpy(h), torch.from_numpy(c))


@pytest.mark.slow
def test_onnx_runtime_predicts_like_torch_on_1000_test_queries(exported, evaluation_characters):
    model, _ = load_checkpoint(CHECKPOINT)
    report = verify(model, exported, evaluation_characters, queries=1000)
    assert report["same_predictions"] == 1000
    assert report["max_abs_probability_difference"] < 1e-4
    assert report["torch_accuracy"] > 0.85


@pytest.mark.gpu
def test_cuda_execution_provider_matches_torch_on_the_gpu(exported, episode):
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed")
    model, _ = load_checkpoint(CHECKPOINT)
    reference = MetaNetPredictor(model, "cuda")
    onnx_runtime = MetaNetPredictor(model, "cuda", backend="onnxruntime", onnx_path=exported)
    assert onnx_runtime.queries.providers[0] == "CUDAExecutionProvider"
    support, labels, queries = episode
    task = reference.build_memory(support[:20], labels[:20])
    assert task.memory.keys.is_cuda
    expected, got = reference.classify(task, queries[:20]), onnx_runtime.classify(task, queries[:20])
    assert got.is_cuda
    _assert_same(expected.cpu(), got.cpu())
