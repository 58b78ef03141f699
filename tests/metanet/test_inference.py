"""The inference API the server uses, on the shipped default checkpoint and real drawings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.inference import MetaNetPredictor
from model.preprocess import to_tensor
from testkit import CHECKPOINT


@pytest.fixture(scope="module")
def predictor() -> MetaNetPredictor:
    return MetaNetPredictor.load(CHECKPOINT)


@pytest.fixture(scope="module")
def task(evaluation_characters):
    chars = np.random.default_rng(0).choice(len(evaluation_characters.names), 25, replace=False)
    images = evaluation_characters.images[chars]  # [25, 20, 28, 28]
    return images[:, 0], [f"char{i}" for i in range(25)], images[:, 1]


def test_one_shot_classification_is_far_above_chance(predictor, task):
    support, labels, queries = task
    memory = predictor.build_memory(support[:20], labels[:20])
    probabilities = predictor.classify(memory, queries[:20])
    assert probabilities.shape == (20, 20)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(20))
    assert (probabilities.argmax(-1) == torch.arange(20)).float().mean() >= 0.75  # chance: 0.05


def test_growing_a_task_equals_building_it_at_once(predictor, task):
    support, labels, queries = task
    whole = predictor.build_memory(support, labels)  # 25 examples: Q* reads the first 20
    grown = predictor.build_memory(support[:3], labels[:3])
    for i in range(3, 25):  # one new label at a time, through d's kept LSTM state
        previous = grown
        grown = predictor.extend_memory(grown, support[i : i + 1], labels[i : i + 1])
        assert previous.num_examples == i  # the old memory is untouched
    assert grown.labels == whole.labels
    torch.testing.assert_close(
        grown.memory.fast_weights.dense(), whole.memory.fast_weights.dense(), atol=1e-4, rtol=1e-4
    )
    torch.testing.assert_close(grown.keys, whole.keys, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(
        predictor.classify(grown, queries), predictor.classify(whole, queries), atol=1e-4, rtol=1e-3
    )


def test_extending_with_a_known_label_keeps_the_other_fast_weights(predictor, task):
    support, labels, _ = task
    memory = predictor.build_memory(support[:20], labels[:20])
    extended = predictor.extend_memory(memory, support[20:21], labels[:1])
    assert extended.labels == memory.labels and extended.num_examples == 21
    assert torch.equal(extended.memory.fast_weights.dense()[:20], memory.memory.fast_weights.dense())
    assert torch.equal(extended.keys[:20], memory.keys)  # Q* is final after T = 20 examples


def test_top_k_attention_over_every_key_equals_dense(predictor, task):
    support, labels, queries = task
    memory = predictor.build_memory(support[:10], labels[:10])
    cosine = predictor.embed_queries(memory, queries[:4]) @ memory.keys.T
    top = cosine.topk(10)
    torch.testing.assert_close(
        predictor.classify(memory, queries[:4], (top.indices, top.values)),
        predictor.classify(memory, queries[:4]),
        atol=1e-5,
        rtol=1e-4,
    )


def test_a_batch_of_several_tasks_equals_one_call_per_task(predictor, task):
    support, labels, queries = task
    first = predictor.build_memory(support[:5], labels[:5])
    second = predictor.build_memory(support[5:12], labels[5:12])
    batched = predictor.classify_batch([(first, queries[:3]), (second, queries[5:7])])
    assert [a.probabilities.shape for a in batched] == [(3, 5), (2, 7)]
    assert [a.novelty.shape for a in batched] == [(3,), (2,)]
    for answer, alone in zip(
        batched,
        [
            predictor.classify_batch([(first, queries[:3])])[0],
            predictor.classify_batch([(second, queries[5:7])])[0],
        ],
        strict=True,
    ):
        torch.testing.assert_close(answer.probabilities, alone.probabilities, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(answer.novelty, alone.novelty, atol=1e-5, rtol=1e-4)


def test_bad_calls_are_rejected(predictor, task):
    support, labels, _ = task
    with pytest.raises(ValueError):
        predictor.build_memory(support[:2], labels[:3])
    with pytest.raises(ValueError):
        predictor.build_memory(support[:0], [])


def test_the_server_path_gives_the_training_forward_probabilities(predictor, evaluation_characters):
    """A real 20-way episode: build_memory + classify (what the server runs) against MetaNet.forward."""
    chars = np.random.default_rng(1).choice(len(evaluation_characters.names), 20, replace=False)
    images = evaluation_characters.images[chars]  # [20, 20, 28, 28]
    support, queries = images[:, 0], images[:, 1:4].reshape(-1, 28, 28)  # 60 queries, 3 per label
    model = predictor.model
    with torch.no_grad():
        logits = model(
            to_tensor(support), torch.arange(20), to_tensor(queries), torch.arange(20)
        )  # labels k = codebook row k, as the server assigns them in order of appearance
    expected, labels = torch.softmax(logits, -1), [f"c{i}" for i in range(20)]
    exact = MetaNetPredictor(model, storage="float32")  # m by table, rows as computed
    torch.testing.assert_close(exact.classify(exact.build_memory(support, labels), queries), expected)
    served = predictor.classify(predictor.build_memory(support, labels), queries)  # int8 rows
    assert predictor.storage == "int8"
    assert (served - expected).abs().max() < 0.02
    assert torch.equal(served.argmax(-1), expected.argmax(-1))
    assert (served.argmax(-1) == torch.arange(20).repeat_interleave(3)).float().mean() >= 0.75


def test_queries_in_chunks_give_the_same_probabilities(predictor, task):
    """The base learner runs over bounded chunks of queries mixed across tasks; the answers do not change."""
    support, labels, queries = task
    first = predictor.build_memory(support[:5], labels[:5])
    second = predictor.build_memory(support[5:25], labels[5:25])
    top = (predictor.embed_queries(second, queries[5:12]) @ second.keys.T).topk(4)
    args = (
        [first.memory, second.memory],
        [to_tensor(queries[:7]), to_tensor(queries[5:12])],
        [None, (top.indices, top.values)],
    )
    with torch.no_grad():
        whole = predictor.model.classify_tasks(*args)
        chunked = predictor.model.classify_tasks(*args, chunk=3)
    for expected, got in zip(whole, chunked, strict=True):
        torch.testing.assert_close(got.logits, expected.logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.nearest, expected.nearest, atol=1e-5, rtol=1e-4)
