"""Derived task memory without HTTP: LRU budget, extend vs rebuild, FAISS top-k routing, builds
beside serving.

A recording stand-in for MetaNetPredictor shows which examples each call was given.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from model.inference import Classified
from server.memory import Building, TaskMemories
from server.memory_cache import CachedTask, MemoryCache
from server.protocol import EmptyTask, TaskTooLarge
from server.store import SQLiteTaskStore


@dataclass
class FakeMemory:
    labels: list[str]
    keys: torch.Tensor

    @property
    def num_examples(self) -> int:
        return len(self.keys)

    def nbytes(self) -> int:
        return 1000 * self.num_examples


def _keys(images: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(
        torch.from_numpy(images.reshape(len(images), -1)[:, :64]).float() + 1, dim=1
    )


class RecordingPredictor:
    task_examples = 2  # T: extends of tasks this large may run inline

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.release = threading.Event()  # builds wait for it unless set
        self.release.set()

    def build_memory(self, images, labels):
        self.release.wait()
        self.calls.append(("build", len(labels)))
        return FakeMemory(list(dict.fromkeys(labels)), _keys(images))

    def extend_memory(self, memory, images, labels):
        self.calls.append(("extend", len(labels)))
        return FakeMemory(
            list(dict.fromkeys(memory.labels + labels)), torch.cat([memory.keys, _keys(images)])
        )

    def embed_queries(self, memory, images):
        return _keys(images)

    def classify_batch(self, items, neighbors):
        self.calls.append(("classify", ["topk" if near else "dense" for near in neighbors]))
        self.neighbors = neighbors
        return [
            Classified(
                torch.full((len(images), len(memory.labels)), 1 / len(memory.labels)),
                torch.zeros(len(images)),
            )
            for memory, images in items
        ]


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture
def store(tmp_path) -> SQLiteTaskStore:
    return SQLiteTaskStore(tmp_path / "tasks.sqlite3", (28, 28))


def memories(store, predictor, topk_min_examples=100, budget=10**9, inline=8) -> TaskMemories:
    return TaskMemories(
        predictor,
        store,
        MemoryCache(budget),
        topk_min_examples=topk_min_examples,
        topk_neighbors=2,
        inline_examples=inline,
    )


def test_extend_reuses_cached_examples_and_rebuilds_after_removal(store) -> None:
    predictor = RecordingPredictor()
    tasks = memories(store, predictor)
    assert tasks.current("t", "task") is None

    store.add_examples("t", "task", images(3), ["a", "b", "c"], max_examples=100)
    entry, refresh = tasks.current("t", "task", wait=True)
    assert refresh == "hit" and (entry.version, entry.memory.num_examples) == (1, 3)  # built by the job
    assert tasks.current("t", "task")[1] == "hit"

    store.add_examples("t", "task", images(1, 1), ["b"], max_examples=100)
    entry, refresh = tasks.current("t", "task")
    assert refresh == "extend" and entry.memory.num_examples == 4  # small: inline
    assert predictor.calls == [("build", 3), ("extend", 1)]  # only the new example was computed

    store.add_examples("t", "task", images(9, 3), list("abcabcabc"), max_examples=100)
    assert isinstance(tasks.current("t", "task"), Building)  # more than 8 new examples: a job
    entry, _ = tasks.current("t", "task", wait=True)
    assert entry.memory.num_examples == 13 and predictor.calls[-1] == ("extend", 9)

    store.forget_label("t", "task", "b")
    entry, _ = tasks.current("t", "task", wait=True)
    assert entry.memory.labels == ["a", "c"] and predictor.calls[-1] == ("build", 8)

    store.delete_task("t", "task")
    store.add_examples("t", "task", images(1, 2), ["z"], max_examples=100)
    entry, _ = tasks.current("t", "task", wait=True)
    assert entry.memory.labels == ["z"] and predictor.calls[-1] == ("build", 1)  # a new task

    for label in ["z"]:
        store.forget_label("t", "task", label)
    with pytest.raises(EmptyTask):
        tasks.current("t", "task")


def test_a_warm_task_is_checked_by_its_version_alone(store, monkeypatch) -> None:
    """A classify of a warm task reads the task's version, not its examples or label counts (which
    grow with the task); a write by anyone makes the next lookup read what changed."""
    tasks = memories(store, RecordingPredictor())
    store.add_examples("t", "task", images(3), ["a", "b", "c"], max_examples=100)
    tasks.current("t", "task", wait=True)
    snapshots, snapshot = [], store.snapshot
    monkeypatch.setattr(store, "snapshot", lambda *a, **kw: snapshots.append(a) or snapshot(*a, **kw))
    monkeypatch.setattr(store, "get_task", lambda *args: pytest.fail("a warm lookup counted the labels"))
    for _ in range(3):
        assert tasks.current("t", "task")[1] == "hit"
    assert snapshots == []
    store.add_examples("t", "task", images(1, 1), ["d"], max_examples=100)
    entry, refresh = tasks.current("t", "task")
    assert refresh == "extend" and entry.memory.labels == ["a", "b", "c", "d"] and len(snapshots) == 1
    store.delete_task("t", "task")
    assert tasks.current("t", "task") is None and len(tasks.cache) == 0


def test_a_build_never_blocks_lookups_of_other_tasks(store) -> None:
    predictor = RecordingPredictor()
    tasks = memories(store, predictor)
    store.add_examples("t", "warm", images(2), ["a", "b"], max_examples=100)
    tasks.current("t", "warm", wait=True)
    predictor.release.clear()  # the next build hangs until released
    store.add_examples("t", "big", images(5, 1), list("abcde"), max_examples=100)
    building = tasks.current("t", "big")
    assert isinstance(building, Building) and building.examples == 5 and building.retry_after > 0
    assert tasks.builds_in_progress == 1
    assert tasks.current("t", "warm")[1] == "hit"  # served while "big" builds
    assert isinstance(tasks.current("t", "big"), Building)  # still one job, not two
    predictor.release.set()
    entry, _ = tasks.current("t", "big", wait=True)
    assert entry.memory.num_examples == 5 and tasks.builds_in_progress == 0
    assert predictor.calls.count(("build", 5)) == 1


def test_a_task_larger_than_the_budget_is_an_error_not_a_rebuild_loop(store) -> None:
    predictor = RecordingPredictor()
    tasks = memories(store, predictor, budget=2500)
    store.add_examples("t", "huge", images(3), ["a", "b", "c"], max_examples=100)  # 3000 bytes
    with pytest.raises(TaskTooLarge):
        tasks.current("t", "huge", wait=True)
    with pytest.raises(TaskTooLarge):
        tasks.current("t", "huge")
    assert predictor.calls == [("build", 3)]


def test_a_support_call_hands_what_it_wrote_to_the_memory(store, monkeypatch) -> None:
    """After a support call, a held memory is extended with the examples the call wrote, without reading
    them back from the store; where another writer came between, what changed is read."""
    predictor = RecordingPredictor()
    tasks = memories(store, predictor)
    state = store.add_examples("t", "task", images(2), ["a", "b"], max_examples=100)
    assert tasks.refresh_after_support("t", "task", state, images(2), ["a", "b"]) is None
    assert predictor.calls == []  # nothing held: the first classify builds it
    tasks.current("t", "task", wait=True)

    reads = []
    for name in ("snapshot", "current_version", "get_task", "label_examples"):
        read = getattr(store, name)
        monkeypatch.setattr(
            store, name, lambda *a, _read=read, _name=name, **kw: reads.append(_name) or _read(*a, **kw)
        )
    added = images(1, 1)
    state = store.add_examples("t", "task", added, ["c"], max_examples=100)
    assert tasks.refresh_after_support("t", "task", state, added, ["c"]) == "extend"
    assert reads == [] and predictor.calls[-1] == ("extend", 1)
    entry, refresh = tasks.current("t", "task")
    assert refresh == "hit" and entry.version == state.version and entry.memory.labels == ["a", "b", "c"]

    store.add_examples("t", "task", images(1, 2), ["d"], max_examples=100)  # another writer
    added = images(1, 3)
    state = store.add_examples("t", "task", added, ["e"], max_examples=100)
    reads.clear()
    assert tasks.refresh_after_support("t", "task", state, added, ["e"]) == "extend"
    assert "snapshot" in reads and predictor.calls[-1] == ("extend", 2)
    assert tasks.current("t", "task")[0].memory.labels == ["a", "b", "c", "d", "e"]


def test_large_tasks_use_faiss_top_k(store) -> None:
    predictor = RecordingPredictor()
    tasks = memories(store, predictor, topk_min_examples=4)
    store.add_examples("t", "small", images(3), ["a", "b", "c"], max_examples=100)
    store.add_examples("t", "large", images(5, 1), list("abcde"), max_examples=100)
    small, _ = tasks.current("t", "small", wait=True)
    large, _ = tasks.current("t", "large", wait=True)
    assert small.index is None and large.index.ntotal == 5

    query = store.snapshot("t", "large").images[[3]]
    tasks.classify([(small, images(1)), (large, query)])
    assert predictor.calls[-1] == ("classify", ["dense", "topk"])  # one batch
    ids, sims = predictor.neighbors[1]
    assert ids.shape == (1, 2) and ids[0, 0] == 3 and sims[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_cache_evicts_least_recently_used_within_budget() -> None:
    def entry(n: int) -> CachedTask:
        return CachedTask(1, 1, FakeMemory(["a"], torch.zeros(n, 64)), None)

    cache = MemoryCache(budget_bytes=5000)
    cache.put(("t", "a"), entry(2))
    cache.put(("t", "b"), entry(2))
    cache.get(("t", "a"))
    cache.put(("t", "c"), entry(2))  # over budget: "b" is the least recently used
    assert ("t", "a") in cache and ("t", "b") not in cache and ("t", "c") in cache
    assert cache.nbytes == 4000 and cache.evictions == 1
    assert not cache.put(("t", "huge"), entry(10))  # larger than the whole budget: not kept
    assert ("t", "huge") not in cache and len(cache) == 2
