"""Derived-memory files: a restarted worker reloads a big task's memory instead of rebuilding it, and
only while the file matches the task, the checkpoint and the storage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.inference import MetaNetPredictor
from server.derived import DerivedMemoryFiles, fingerprint
from server.memory import TaskMemories
from server.memory_cache import MemoryCache
from server.store import SQLiteTaskStore
from testkit import CHECKPOINT


class CountingPredictor(MetaNetPredictor):
    builds = 0

    def build_memory(self, images, labels):
        CountingPredictor.builds += 1
        return super().build_memory(images, labels)


@pytest.fixture(scope="module")
def predictor() -> CountingPredictor:
    return CountingPredictor.load(CHECKPOINT)


def drawings(evaluation_characters, n: int, drawer: int) -> np.ndarray:
    return evaluation_characters.images[:n, drawer]


def test_a_restarted_worker_loads_and_extends_the_saved_memory(tmp_path, predictor, evaluation_characters):
    store = SQLiteTaskStore(tmp_path / "tasks.sqlite3")
    derived = DerivedMemoryFiles(tmp_path / "derived")
    checkpoint = fingerprint(CHECKPOINT)

    def worker(made_with: str = checkpoint) -> TaskMemories:
        return TaskMemories(
            predictor,
            store,
            MemoryCache(10**9),
            topk_min_examples=32,
            topk_neighbors=16,
            inline_examples=8,
            derived=derived,
            checkpoint=made_with,
            derived_min_examples=64,
        )

    labels = [f"c{i}" for i in range(70)]
    store.add_examples("t", "big", drawings(evaluation_characters, 70, 0), labels, 1000)
    first = worker()
    built, _ = first.current("t", "big", wait=True)
    queries = drawings(evaluation_characters, 70, 1)[:6]
    expected = first.classify([(built, queries)])[0].probabilities
    assert first.wait_until_idle() and derived.path("t", "big").exists()  # written after the job answers

    store.add_examples("t", "big", drawings(evaluation_characters, 2, 2), ["c0", "c1"], 1000)
    builds = CountingPredictor.builds
    restarted = worker()
    entry, _ = restarted.current("t", "big", wait=True)
    assert CountingPredictor.builds == builds  # loaded from the file and extended by 2, not rebuilt
    assert entry.version == 2 and entry.memory.num_examples == 72
    reloaded = restarted.classify([(entry, queries)])[0].probabilities
    assert (reloaded.argmax(-1) == expected.argmax(-1)).all()

    wrong = worker("other checkpoint")
    wrong.current("t", "big", wait=True)
    assert CountingPredictor.builds == builds + 1  # made by other weights: rebuilt

    store.forget_label("t", "big", "c5")
    assert derived.load("t", "big", predictor, checkpoint) is not None
    rebuilt = worker()
    entry, _ = rebuilt.current("t", "big", wait=True)
    assert CountingPredictor.builds == builds + 2 and "c5" not in entry.memory.labels  # removal: rebuilt

    store.delete_task("t", "big")
    assert rebuilt.current("t", "big") is None and not derived.path("t", "big").exists()


def test_the_file_round_trips_every_storage(tmp_path, evaluation_characters):
    derived = DerivedMemoryFiles(tmp_path)
    for storage in ("int8", "bfloat16"):
        predictor = MetaNetPredictor.load(CHECKPOINT, storage=storage)
        memory = predictor.build_memory(drawings(evaluation_characters, 30, 0), [f"c{i}" for i in range(30)])
        derived.save("t", storage, 7, 3, memory, "ck")
        stored = derived.load("t", storage, predictor, "ck")
        assert (stored.uid, stored.version, stored.memory.labels) == (7, 3, memory.labels)
        assert torch.equal(stored.memory.memory.fast_weights.dense(), memory.memory.fast_weights.dense())
        assert torch.equal(stored.memory.keys, memory.keys) and torch.equal(
            stored.memory.images, memory.images
        )
        queries = drawings(evaluation_characters, 30, 1)
        assert torch.equal(predictor.classify(stored.memory, queries), predictor.classify(memory, queries))
