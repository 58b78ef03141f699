"""SQLiteTaskStore without HTTP: versions, tenants, snapshots, limits, forgetting, deleting, durability."""

from __future__ import annotations

import numpy as np
import pytest

from server.store import ExampleLimitError, LabelNotFoundError, SQLiteTaskStore


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture
def store(tmp_path) -> SQLiteTaskStore:
    return SQLiteTaskStore(tmp_path / "tasks.sqlite3")


def test_versions_labels_and_snapshots(store: SQLiteTaskStore) -> None:
    first = images(3)
    state = store.add_examples("t", "task", first, ["a", "b", "a"], max_examples=10)
    assert (state.version, state.labels, state.num_examples) == (1, {"a": 2, "b": 1}, 3)
    state = store.add_examples("t", "task", images(2, 1), ["c", "b"], max_examples=10)
    assert (state.version, list(state.labels), state.num_examples) == (2, ["a", "b", "c"], 5)

    full = store.snapshot("t", "task")
    assert full.labels == ["a", "b", "a", "c", "b"]
    np.testing.assert_array_equal(full.images[:3], first)
    delta = store.snapshot("t", "task", since_version=1)
    assert delta.labels == ["c", "b"] and delta.images.shape == (2, 28, 28)
    assert store.snapshot("t", "task", since_version=2).labels == []


def test_tenants_are_isolated(store: SQLiteTaskStore) -> None:
    store.add_examples("alice", "task", images(1), ["a"], max_examples=10)
    assert store.get_task("bob", "task") is None
    store.add_examples("bob", "task", images(1), ["b"], max_examples=10)
    assert list(store.get_task("alice", "task").labels) == ["a"]
    assert list(store.get_task("bob", "task").labels) == ["b"]
    assert store.counts().tenants == 2


def test_example_limit_is_all_or_nothing(store: SQLiteTaskStore) -> None:
    store.add_examples("t", "task", images(3), ["a"] * 3, max_examples=4)
    with pytest.raises(ExampleLimitError):
        store.add_examples("t", "task", images(2), ["b"] * 2, max_examples=4)
    state = store.get_task("t", "task")
    assert (state.version, state.num_examples) == (1, 3)


def test_forget_label_bumps_rebuild_version(store: SQLiteTaskStore) -> None:
    store.add_examples("t", "task", images(3), ["a", "b", "a"], max_examples=10)
    state = store.forget_label("t", "task", "a")
    assert (state.version, state.rebuild_version, state.labels) == (2, 2, {"b": 1})
    with pytest.raises(LabelNotFoundError):
        store.forget_label("t", "task", "a")
    assert store.forget_label("t", "missing", "a") is None


def test_delete_then_recreate_is_a_new_task(store: SQLiteTaskStore) -> None:
    old = store.add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    assert store.delete_task("t", "task")
    assert not store.delete_task("t", "task")
    assert store.get_task("t", "task") is None and store.counts().examples == 0
    new = store.add_examples("t", "task", images(1), ["c"], max_examples=10)
    assert new.uid != old.uid and new.version == 1


def test_commits_survive_reopening(tmp_path) -> None:
    path = tmp_path / "tasks.sqlite3"
    SQLiteTaskStore(path).add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    reopened = SQLiteTaskStore(path)
    assert reopened.get_task("t", "task").labels == {"a": 1, "b": 1}
    (mode,) = reopened._connection().execute("PRAGMA journal_mode").fetchone()
    (sync,) = reopened._connection().execute("PRAGMA synchronous").fetchone()
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_rejects_mismatched_input(store: SQLiteTaskStore) -> None:
    with pytest.raises(ValueError):
        store.add_examples("t", "task", images(2), ["a"], max_examples=10)
    with pytest.raises(ValueError):
        store.add_examples("t", "task", images(1).astype(np.float32), ["a"], max_examples=10)


def test_list_tasks_and_first_example_of_each_label(store: SQLiteTaskStore) -> None:
    pixels = images(4)
    store.add_examples("t", "older", pixels[:1], ["x"], max_examples=10)
    store.add_examples("t", "newer", pixels[1:3], ["b", "a"], max_examples=10)
    store.add_examples("t", "newer", pixels[3:], ["b"], max_examples=10)
    store.add_examples("other", "theirs", pixels[:1], ["y"], max_examples=10)
    assert [s.task_id for s in store.list_tasks("t")] == ["newer", "older"]  # most recently changed first
    assert store.list_tasks("nobody") == []

    state, firsts = store.label_examples("t", "newer")
    assert state.labels == {"b": 2, "a": 1} and list(firsts) == ["b", "a"]
    np.testing.assert_array_equal(firsts["b"], pixels[1])
    np.testing.assert_array_equal(firsts["a"], pixels[2])
    store.forget_label("t", "newer", "b")
    assert list(store.label_examples("t", "newer")[1]) == ["a"]
    assert store.label_examples("t", "missing") is None
    assert store.label_examples("other", "newer") is None
