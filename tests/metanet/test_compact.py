"""The serving support path: m as an exact table, compact fast-weight rows, chunked builds."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_checkpoint
from model.compact import STORAGES, FastWeightRows, RowLayout, StoragePolicy
from model.inference import MetaNetPredictor
from model.meta_info import example_gradients, preprocess_gradient
from model.meta_table import PiecewiseLinearM
from testkit import CHECKPOINT


@pytest.fixture(scope="module")
def model():
    return load_checkpoint(CHECKPOINT, "cpu")[0]


@pytest.fixture(scope="module")
def drawings(evaluation_characters):
    return evaluation_characters.images[:40, 0]  # [40, 28, 28] uint8, one drawing of 40 characters


@torch.no_grad()
def test_table_equals_the_mlp_on_real_and_extreme_gradients(model, drawings):
    x = torch.from_numpy(drawings[:8]).float().div(255).unsqueeze(1)
    grads = example_gradients(dict(model.base), model.base_codes[:8], x)
    extreme = torch.cat(
        [
            torch.linspace(-2, 2, 40001),
            torch.randn(20000) * 1e-3,
            torch.tensor([0.0, 1e-30, -1e-30, 1e30, -1e30]),
        ]
    )
    for mlp in (model.m_conv, model.m_fc):
        table = PiecewiseLinearM(mlp, model.config.grad_clip_k)
        for g in [grads["conv3"], grads["fc"], grads["out"], extreme]:
            expected = mlp(preprocess_gradient(g, model.config.grad_clip_k))
            torch.testing.assert_close(table(g), expected, atol=1e-6, rtol=1e-5)
    relative = PiecewiseLinearM(model.m_fc, model.config.grad_clip_k, subtract_zero=True)
    assert relative(torch.zeros(3)).abs().max() < 1e-7


def test_int8_rows_round_within_half_a_step_and_read_like_dense() -> None:
    layout = RowLayout(((4, 9), (3, 16)))
    rows = torch.randn(6, layout.num_coordinates) * torch.logspace(-3, 0, 6).unsqueeze(1)
    stored = FastWeightRows.from_dense(rows, layout, "int8")
    assert stored.nbytes == 6 * (layout.num_coordinates + 4 * layout.num_rows)
    dense = stored.dense()
    for (count, length), block, original in zip(
        layout.layers,
        dense.split([c * n for c, n in layout.layers], 1),
        rows.split([c * n for c, n in layout.layers], 1),
        strict=True,
    ):
        step = original.reshape(6, count, length).abs().amax(-1, keepdim=True) / 127
        assert ((block - original).reshape(6, count, length).abs() <= step / 2 + 1e-7).all()
    weights = torch.softmax(torch.randn(2, 6), -1)
    torch.testing.assert_close(stored.read(weights), weights @ dense, atol=1e-6, rtol=1e-5)
    ids = torch.tensor([[0, 5, 2], [1, 1, 3]])
    top = weights.gather(1, ids)
    torch.testing.assert_close(
        stored.read(top, ids), torch.einsum("qk,qkp->qp", top, dense[ids]), atol=1e-6, rtol=1e-5
    )


@pytest.mark.parametrize("storage", STORAGES)
def test_appending_shares_the_buffer_and_leaves_older_versions_alone(storage) -> None:
    layout = RowLayout(((2, 5),))
    rows = torch.randn(9, 10)
    first = FastWeightRows.from_dense(rows[:3], layout, storage)
    second = first.appended(rows[3:5])  # grows the buffer (copies once)
    third = second.appended(rows[5:6])  # fits in the spare capacity: no copy
    assert third._buffer is second._buffer and len(second) == 5 and len(third) == 6
    branch = second.appended(rows[6:9])  # second's tail belongs to third now: a copy
    assert branch._buffer is not third._buffer
    tolerance = {"float32": 0, "float16": 1e-3, "bfloat16": 1e-2, "int8": 2e-2}[storage]
    torch.testing.assert_close(third.dense(), rows[:6], atol=tolerance * 3, rtol=tolerance)
    torch.testing.assert_close(
        branch.dense(), torch.cat([rows[:5], rows[6:9]]), atol=tolerance * 3, rtol=tolerance
    )
    torch.testing.assert_close(second.dense(), rows[:5], atol=tolerance * 3, rtol=tolerance)


@torch.no_grad()
def test_chunked_float32_build_equals_the_training_path(model, drawings) -> None:
    predictor = MetaNetPredictor(model, storage="float32", chunk_size=7)
    labels = [f"c{i}" for i in range(40)]
    served = predictor.build_memory(drawings, labels)
    x = torch.from_numpy(drawings).float().div(255).unsqueeze(1)
    reference = model.build_memory(x, torch.arange(40), torch.arange(40))
    torch.testing.assert_close(
        served.memory.fast_weights.dense(), reference.fast_weights, atol=1e-6, rtol=1e-5
    )
    torch.testing.assert_close(served.memory.fast_out, reference.fast_out, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(served.keys, reference.keys, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_compact_storages_classify_like_float32(model, evaluation_characters) -> None:
    support, queries = evaluation_characters.images[:20, 0], evaluation_characters.images[:20, 1]
    labels = [f"c{i}" for i in range(20)]
    reference = MetaNetPredictor(model, storage="float32")
    expected = reference.classify(reference.build_memory(support, labels), queries)
    for storage in ("float16", "bfloat16", "int8"):
        predictor = MetaNetPredictor(model, storage=storage)
        memory = predictor.build_memory(support, labels)
        assert memory.nbytes() < reference.build_memory(support, labels).nbytes() / 1.9
        probabilities = predictor.classify(memory, queries)
        assert (probabilities - expected).abs().max() < 0.02
        assert (probabilities.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95


def test_restoring_rows_in_another_storage_keeps_them() -> None:
    layout = RowLayout(((4, 9), (3, 16)))
    rows = torch.randn(70, layout.num_coordinates)
    exact = FastWeightRows.from_dense(rows, layout, "float32")
    compact = exact.restored("int8", chunk=32)  # three chunks
    assert compact.storage == "int8" and len(compact) == 70 and exact.storage == "float32"
    torch.testing.assert_close(compact.dense(), FastWeightRows.from_dense(rows, layout, "int8").dense())
    torch.testing.assert_close(compact.restored("float32").dense(), compact.dense())


@torch.no_grad()
def test_a_task_growing_past_the_small_tier_is_restored_once(model, drawings) -> None:
    """Small tasks keep float32 rows, large ones int8; a task that grows across the line answers as a
    task built at its final size would."""
    policy = StoragePolicy(large="int8", small="float32", large_from=6)
    predictor = MetaNetPredictor(model, storage=policy)
    labels = [f"c{i}" for i in range(8)]
    small = predictor.build_memory(drawings[:5], labels[:5])
    assert small.memory.fast_weights.storage == "float32" and predictor.storage_for(5) == "float32"
    grown = predictor.extend_memory(small, drawings[5:7], labels[5:7])
    assert grown.memory.fast_weights.storage == "int8" and predictor.storage == "int8"
    assert small.memory.fast_weights.storage == "float32"  # the older version is untouched
    built = predictor.build_memory(drawings[:7], labels[:7])
    torch.testing.assert_close(grown.memory.fast_weights.dense(), built.memory.fast_weights.dense())
    queries = drawings[:7]
    torch.testing.assert_close(predictor.classify(grown, queries), predictor.classify(built, queries))
    with pytest.raises(ValueError):
        StoragePolicy(large="int4")
