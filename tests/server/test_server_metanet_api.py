"""MetaNetAPI, the inference worker, without HTTP: typed work items in, one outcome per item out, and
an item that fails (in the batched classify pass too) fails alone."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import ServerSettings
from server.images import ImageDecoder
from server.protocol import (
    ClassifyResult,
    ClassifyWork,
    EmptyTask,
    ExampleLimit,
    Outcome,
    SupportResult,
    SupportWork,
    TaskBuilding,
    TaskNotFound,
    Work,
    WorkerFailed,
)
from server.quotas import TenantQuotas
from server.worker import MetaNetAPI
from testkit import CHECKPOINT, b64


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> MetaNetAPI:
    settings = ServerSettings(
        data_dir=tmp_path_factory.mktemp("worker"), checkpoint=CHECKPOINT, max_examples_per_task=30
    )
    api = MetaNetAPI(settings, image_size=28, quotas=TenantQuotas(settings.tenant_quota))
    api.setup("cpu")
    return api


@pytest.fixture(scope="module")
def drawings(tibetan) -> np.ndarray:
    """[character, drawer, 28, 28] of 10 characters, as the HTTP routes decode them."""
    decoder = ImageDecoder(4096, 28)
    return np.stack([[decoder.decode(b64(png), "img") for png in row[:2]] for row in tibetan[:10]])


def settled(worker: MetaNetAPI, items: list[Work]) -> list[Outcome]:
    """``worker.predict``, asking again for the items whose memory was building (a worker never waits
    for a build job; ``Dispatcher`` asks again the same way)."""
    outcomes = worker.predict(items)
    while building := [i for i, outcome in enumerate(outcomes) if isinstance(outcome, TaskBuilding)]:
        assert worker.memories.wait_until_idle()
        for i, outcome in zip(building, worker.predict([items[i] for i in building]), strict=True):
            outcomes[i] = outcome
    return outcomes


def test_support_then_classify_in_one_batch(worker: MetaNetAPI, drawings: np.ndarray) -> None:
    labels = tuple(f"c{i}" for i in range(10))
    support = SupportWork("t", "batch", drawings[:, 0], labels)
    classify = ClassifyWork("t", "batch", drawings[:, 1], top_k=2)
    classified, added = settled(worker, [classify, support])  # the support runs first
    assert added == SupportResult(1, 10, labels)
    assert isinstance(classified, ClassifyResult) and classified.version == 1
    assert len(classified.predictions) == 10 and all(len(p.top_k) == 2 for p in classified.predictions)
    assert sum(p.label == f"c{i}" for i, p in enumerate(classified.predictions)) >= 8


def test_service_errors_answer_their_item_only(worker: MetaNetAPI, drawings: np.ndarray) -> None:
    worker.predict([SupportWork("t", "full", drawings[:, 0], tuple(f"c{i}" for i in range(10)))])
    over_limit = SupportWork(
        "t", "full", np.repeat(drawings[:, 0], 3, axis=0), tuple(f"x{i}" for i in range(30))
    )
    missing = ClassifyWork("t", "missing", drawings[:1, 1])
    good = ClassifyWork("t", "full", drawings[:3, 1])
    outcomes = settled(worker, [over_limit, missing, good])
    assert isinstance(outcomes[0], ExampleLimit) and isinstance(outcomes[1], TaskNotFound)
    assert isinstance(outcomes[2], ClassifyResult) and outcomes[2].version == 1
    for label in [f"c{i}" for i in range(10)]:
        worker.store.forget_label("t", "full", label)
    assert isinstance(worker.predict([ClassifyWork("t", "full", drawings[:1, 1])])[0], EmptyTask)


def test_an_item_that_breaks_the_batched_pass_fails_alone(worker: MetaNetAPI, drawings: np.ndarray) -> None:
    labels = tuple(f"c{i}" for i in range(5))
    worker.predict([SupportWork("t", "mates", drawings[:5, 0], labels)])
    good = [ClassifyWork("t", "mates", drawings[i : i + 1, 1], top_k=5) for i in range(5)]
    alone = [settled(worker, [item])[0] for item in good]
    broken = ClassifyWork("t", "mates", np.zeros((1, 28), np.uint8))  # not [q, 28, 28]: the model raises
    outcomes = worker.predict([good[0], broken, *good[1:]])
    assert isinstance(outcomes[1], WorkerFailed)
    answered = [outcomes[0], *outcomes[2:]]
    for got, want in zip(answered, alone, strict=True):
        assert [s.label for s in got.predictions[0].top_k] == [s.label for s in want.predictions[0].top_k]
        assert got.predictions[0].score == pytest.approx(want.predictions[0].score, abs=1e-5)


def test_an_unknown_work_item_is_a_worker_failure(worker: MetaNetAPI) -> None:
    assert isinstance(worker.predict(["not a work item"])[0], WorkerFailed)
