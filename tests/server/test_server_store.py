"""The task store without HTTP, every test on both backends (SQLite and a real PostgreSQL server):
versions, tenants, snapshots, limits, forgetting, deleting, images stored once, concurrent writers,
migrations; then what only one backend has (SQLite's upgrade path, PostgreSQL outages)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psycopg
import pytest

from server.protocol import (
    ExampleLimit,
    IdempotencyKeyReused,
    LabelNotFound,
    QuotaExceeded,
    StoreOutcomeUnknown,
    StoreUnavailable,
    TaskExists,
)
from server.store import TaskStore, TaskVersion, open_store
from server.store.base import StorageQuota
from server.store.migrations import POSTGRESQL, SQLITE
from testkit.postgres import PostgresServer


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tasks.sqlite3"
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(store_url: str) -> Iterator[TaskStore]:
    opened = open_store(store_url)
    yield opened
    opened.close()


def test_versions_labels_and_snapshots(store: TaskStore) -> None:
    first = images(3)
    state = store.add_examples("t", "task", first, ["a", "b", "a"], max_examples=10)
    assert (state.version, state.labels, state.num_examples) == (1, {"a": 2, "b": 1}, 3)
    state = store.add_examples("t", "task", images(2, 1), ["c", "b"], max_examples=10)
    assert (state.version, list(state.labels), state.num_examples) == (2, ["a", "b", "c"], 5)
    assert store.get_task("t", "task") == state

    full = store.snapshot("t", "task")
    assert full.state == state and full.labels == ["a", "b", "a", "c", "b"]
    np.testing.assert_array_equal(full.images[:3], first)
    delta = store.snapshot("t", "task", since_version=1)
    assert delta.labels == ["c", "b"] and delta.images.shape == (2, 28, 28)
    np.testing.assert_array_equal(delta.images, images(2, 1))
    assert store.snapshot("t", "task", since_version=2).labels == []
    assert store.snapshot("t", "missing") is None and store.get_task("t", "missing") is None


def test_tenants_are_isolated(store: TaskStore) -> None:
    store.add_examples("alice", "task", images(1), ["a"], max_examples=10)
    assert store.get_task("bob", "task") is None
    store.add_examples("bob", "task", images(1), ["b"], max_examples=10)
    assert list(store.get_task("alice", "task").labels) == ["a"]
    assert list(store.get_task("bob", "task").labels) == ["b"]
    assert store.counts().tenants == 2


def test_tenant_quotas_are_checked_in_the_write_and_name_the_limit(store: TaskStore) -> None:
    quota = StorageQuota(max_tasks=2, max_examples=5, max_stored_bytes=4 * 28 * 28)
    store.add_examples("t", "one", images(2), ["a", "b"], 10, quota)
    store.add_examples("t", "two", images(1, 1), ["c"], 10, quota)
    with pytest.raises(QuotaExceeded, match="max_tasks=2"):
        store.add_examples("t", "three", images(1, 2), ["d"], 10, quota)
    assert store.get_task("t", "three") is None  # nor its tenant's counts changed
    with pytest.raises(QuotaExceeded, match=f"max_stored_bytes={4 * 28 * 28}"):
        store.add_examples("t", "one", images(2, 3), ["e", "f"], 10, quota)  # 5 distinct images
    store.add_examples("t", "one", images(2), ["a", "b"], 10, quota)  # stored once: no new bytes
    with pytest.raises(QuotaExceeded, match="max_examples=5"):
        store.add_examples("t", "two", images(1, 1), ["c"], 10, quota)
    assert {s.task_id: s.num_examples for s in store.list_tasks("t")} == {"one": 4, "two": 1}
    assert store.counts().images == 3
    store.add_examples("u", "three", images(1, 2), ["d"], 10, quota)  # another tenant's own quota


def test_example_limit_is_all_or_nothing(store: TaskStore) -> None:
    store.add_examples("t", "task", images(3), ["a"] * 3, max_examples=4)
    with pytest.raises(ExampleLimit):
        store.add_examples("t", "task", images(2, 1), ["b"] * 2, max_examples=4)
    state = store.get_task("t", "task")
    assert (state.version, state.num_examples) == (1, 3)
    assert store.counts().images == 3  # the rejected call's images were not kept either
    with pytest.raises(ExampleLimit):  # nor is a task the first call would have created
        store.add_examples("t", "new", images(5), ["a"] * 5, max_examples=4)
    assert store.get_task("t", "new") is None and store.counts().tasks == 1


def test_forget_label_bumps_rebuild_version(store: TaskStore) -> None:
    store.add_examples("t", "task", images(3), ["a", "b", "a"], max_examples=10)
    state = store.forget_label("t", "task", "a")
    assert (state.version, state.rebuild_version, state.labels) == (2, 2, {"b": 1})
    with pytest.raises(LabelNotFound):
        store.forget_label("t", "task", "a")
    assert store.get_task("t", "task").version == 2
    assert store.forget_label("t", "missing", "a") is None
    assert store.snapshot("t", "task").labels == ["b"]


def test_delete_then_recreate_is_a_new_task(store: TaskStore) -> None:
    old = store.add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    assert store.delete_task("t", "task")
    assert not store.delete_task("t", "task")
    assert store.get_task("t", "task") is None and store.counts().examples == 0
    new = store.add_examples("t", "task", images(1), ["c"], max_examples=10)
    assert new.uid != old.uid and new.version == 1


def test_current_version_names_the_incarnation_and_its_version(store: TaskStore) -> None:
    assert store.current_version("t", "task") is None
    first = store.add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    assert store.current_version("t", "task") == TaskVersion(first.uid, 1)
    store.forget_label("t", "task", "a")
    assert store.current_version("t", "task") == TaskVersion(first.uid, 2)
    assert store.current_version("other tenant", "task") is None
    store.delete_task("t", "task")
    assert store.current_version("t", "task") is None
    again = store.add_examples("t", "task", images(1), ["c"], max_examples=10)
    assert store.current_version("t", "task") == TaskVersion(again.uid, 1) and again.uid != first.uid


def test_images_are_stored_once_per_tenant(store: TaskStore) -> None:
    drawing = images(1)
    store.add_examples("t", "one", np.concatenate([drawing, drawing]), ["a", "b"], max_examples=10)
    store.add_examples("t", "two", drawing, ["c"], max_examples=10)
    store.add_examples("u", "one", drawing, ["a"], max_examples=10)
    counts = store.counts()
    assert (counts.examples, counts.images) == (4, 2)  # one image per tenant
    np.testing.assert_array_equal(store.snapshot("t", "one").images, np.concatenate([drawing, drawing]))

    store.forget_label("t", "one", "a")  # still used by label b and by task two
    store.delete_task("t", "one")  # still used by task two
    assert store.counts().images == 2
    np.testing.assert_array_equal(store.snapshot("t", "two").images, drawing)
    store.delete_task("t", "two")  # its last use in tenant t: gone
    assert store.counts().images == 1
    store.forget_label("u", "one", "a")
    assert store.counts().images == 0


def test_concurrent_writers_to_one_task_get_each_version_once(store_url: str) -> None:
    """Four store instances (separate connections, as separate replicas have) write to one task at once:
    every write gets its own version, 1..N, and no example is lost."""
    stores = [open_store(store_url) for _ in range(4)]
    writes_each = 10

    def write(i: int) -> list[int]:
        return [
            stores[i].add_examples("t", "shared", images(1, 100 * i + j), [f"w{i}-{j}"], 10_000).version
            for j in range(writes_each)
        ]

    with ThreadPoolExecutor(len(stores)) as pool:
        versions = [v for vs in pool.map(write, range(len(stores))) for v in vs]
    total = len(stores) * writes_each
    assert sorted(versions) == list(range(1, total + 1))
    state = stores[0].get_task("t", "shared")
    assert (state.version, state.num_examples) == (total, total)
    snap = stores[1].snapshot("t", "shared")
    for i in range(len(stores)):  # each writer's examples in the order it wrote them
        mine = [label for label in snap.labels if label.startswith(f"w{i}-")]
        assert mine == [f"w{i}-{j}" for j in range(writes_each)]
    for opened in stores:
        opened.close()


def test_stores_opened_at_once_apply_each_migration_once(store_url: str) -> None:
    """Replicas starting together against a new database: the schema is created exactly once."""
    barrier = threading.Barrier(6)

    def start() -> int:
        barrier.wait()
        opened = open_store(store_url)
        try:
            return opened.schema_version()
        finally:
            opened.close()

    with ThreadPoolExecutor(6) as pool:
        versions = list(pool.map(lambda _: start(), range(6)))
    latest = (SQLITE if store_url.startswith("sqlite") else POSTGRESQL)[-1].version
    assert versions == [latest] * 6


def test_rejects_mismatched_input(store: TaskStore) -> None:
    with pytest.raises(ValueError):
        store.add_examples("t", "task", images(2), ["a"], max_examples=10)
    with pytest.raises(ValueError):
        store.add_examples("t", "task", images(1).astype(np.float32), ["a"], max_examples=10)


def test_a_repeated_idempotency_key_writes_nothing_and_answers_the_first_state(store: TaskStore) -> None:
    first = store.write_examples("t", "task", images(2), ["a", "b"], 10, idempotency_key="k1")
    assert not first.replayed and first.state.version == 1
    store.add_examples("t", "task", images(1, 1), ["c"], 10)  # another write in between
    again = store.write_examples("t", "task", images(2), ["a", "b"], 10, idempotency_key="k1")
    assert again.replayed and again.state == first.state  # the first call's answer, not today's state
    assert store.get_task("t", "task").labels == {"a": 1, "b": 1, "c": 1}
    for other in [  # the same key with another request: another label, image, task or kind of write
        dict(task_id="task", images=images(2), labels=["a", "x"]),
        dict(task_id="task", images=images(2, 5), labels=["a", "b"]),
        dict(task_id="other", images=images(2), labels=["a", "b"]),
        dict(task_id="task", images=images(2), labels=["a", "b"], new_task=True),
    ]:
        with pytest.raises(IdempotencyKeyReused):
            store.write_examples("t", max_examples=10, idempotency_key="k1", **other)
    assert store.get_task("t", "task").version == 2 and store.get_task("t", "other") is None
    # Keys are per tenant; a new key is a new write.
    assert not store.write_examples("u", "task", images(2), ["a", "b"], 10, idempotency_key="k1").replayed
    fresh = store.write_examples("t", "task", images(2), ["a", "b"], 10, idempotency_key="k2")
    assert fresh.state.version == 3


def test_a_replay_passes_the_quota_its_first_write_filled_and_a_refusal_keeps_no_key(
    store: TaskStore,
) -> None:
    full = StorageQuota(max_tasks=1, max_examples=2, max_stored_bytes=10**9)
    first = store.write_examples("t", "task", images(2), ["a", "b"], 10, idempotency_key="k1", quota=full)
    again = store.write_examples("t", "task", images(2), ["a", "b"], 10, idempotency_key="k1", quota=full)
    assert again.replayed and again.state == first.state
    with pytest.raises(QuotaExceeded, match="max_examples=2"):
        store.write_examples("t", "task", images(1, 1), ["c"], 10, idempotency_key="k2", quota=full)
    assert store.get_task("t", "task").version == 1
    # The refused write stored nothing, its key included: sent again with room, it writes.
    roomy = StorageQuota(max_tasks=1, max_examples=3, max_stored_bytes=10**9)
    later = store.write_examples("t", "task", images(1, 1), ["c"], 10, idempotency_key="k2", quota=roomy)
    assert not later.replayed and later.state.version == 2


def test_an_expired_idempotency_key_is_a_new_write(store_url: str) -> None:
    remembering, forgetful = open_store(store_url), open_store(store_url, idempotency_ttl=1e-6)
    try:
        remembering.write_examples("t", "task", images(1), ["a"], 10, idempotency_key="k")
        assert remembering.write_examples("t", "task", images(1), ["a"], 10, idempotency_key="k").replayed
        expired = forgetful.write_examples("t", "task", images(1), ["a"], 10, idempotency_key="k")
        assert not expired.replayed and expired.state.labels == {"a": 2}
    finally:
        remembering.close()
        forgetful.close()


def test_concurrent_repeats_of_one_idempotency_key_write_once(store_url: str) -> None:
    """Eight writers (four store instances, as replicas) send the same keyed write at once: one writes,
    the others answer its state."""
    stores = [open_store(store_url) for _ in range(4)]
    barrier = threading.Barrier(8)

    def write(i: int):
        barrier.wait()
        return stores[i % 4].write_examples(
            "t", "task", images(3), ["a", "b", "a"], 10, idempotency_key="once"
        )

    try:
        with ThreadPoolExecutor(8) as pool:
            written = list(pool.map(write, range(8)))
        assert sum(not w.replayed for w in written) == 1
        assert all(w.state == written[0].state for w in written)
        assert stores[0].get_task("t", "task").labels == {"a": 2, "b": 1}
    finally:
        for opened in stores:
            opened.close()


def test_a_new_task_write_refuses_an_existing_task(store: TaskStore) -> None:
    store.add_examples("t", "task", images(1), ["a"], 10)
    with pytest.raises(TaskExists):
        store.write_examples("t", "task", images(2), ["b", "c"], 10, new_task=True)
    assert store.get_task("t", "task").labels == {"a": 1}
    created = store.write_examples("t", "fresh", images(2), ["b", "c"], 10, new_task=True)
    assert (created.state.version, created.state.labels) == (1, {"b": 1, "c": 1})


def test_open_store_urls(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("sqlite:///data/tasks.sqlite3").path.resolve() == tmp_path / "data/tasks.sqlite3"
    assert open_store(f"sqlite:///{tmp_path}/abs.sqlite3").path == tmp_path / "abs.sqlite3"
    for bad in ("data/tasks.sqlite3", "mysql://h/db", "sqlite://relative"):
        with pytest.raises(ValueError):
            open_store(bad)


def test_list_tasks_and_first_example_of_each_label(store: TaskStore) -> None:
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


# SQLite only.


def test_sqlite_commits_survive_reopening(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/tasks.sqlite3"
    open_store(url).add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    reopened = open_store(url)
    assert reopened.get_task("t", "task").labels == {"a": 1, "b": 1}
    (mode,) = reopened._connection().execute("PRAGMA journal_mode").fetchone()
    (sync,) = reopened._connection().execute("PRAGMA synchronous").fetchone()
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_sqlite_store_from_before_migrations_is_upgraded(tmp_path) -> None:
    """A store written by the server before versioned migrations (images inline in ``examples``) opens
    with every task, version and image intact, each image now stored once."""
    path = tmp_path / "tasks.sqlite3"
    con = sqlite3.connect(path)
    for statement in SQLITE[0].statements:
        con.execute(statement)
    drawings = images(3)
    con.execute("INSERT INTO tenants VALUES ('t', 0)")
    con.execute(
        "INSERT INTO tasks (tenant, task_id, version, rebuild_version, updated_at) VALUES ('t', 'x', 2, 0, 0)"
    )
    rows = [
        (1, "a", 1, drawings[0]),
        (1, "b", 1, drawings[1]),
        (1, "a", 2, drawings[0]),
        (1, "c", 2, drawings[2]),
    ]
    con.executemany(
        "INSERT INTO examples (task_uid, label, version, image) VALUES (?, ?, ?, ?)",
        [(uid, label, version, image.tobytes()) for uid, label, version, image in rows],
    )
    con.commit()
    con.close()

    store = open_store(f"sqlite:///{path}")
    assert store.schema_version() == SQLITE[-1].version
    state = store.get_task("t", "x")
    assert (state.version, state.labels) == (2, {"a": 2, "b": 1, "c": 1})
    snap = store.snapshot("t", "x", since_version=1)
    assert snap.labels == ["a", "c"]
    np.testing.assert_array_equal(snap.images, drawings[[0, 2]])
    assert store.counts().images == 3
    assert store.add_examples("t", "x", drawings[1:2], ["b"], max_examples=10).version == 3
    assert store.counts().images == 3


# PostgreSQL only.


def test_postgres_outage_fails_fast_and_recovers_by_itself(postgres: PostgresServer) -> None:
    """With the database killed every call raises StoreUnavailable within seconds (never hangs);
    once it is back the same store object works again, with every committed write there."""
    store = open_store(postgres.create_database())
    store.add_examples("t", "task", images(2), ["a", "b"], max_examples=10)
    postgres.kill()
    try:
        for call in (
            lambda: store.get_task("t", "task"),
            lambda: store.add_examples("t", "task", images(1, 5), ["c"], max_examples=10),
            lambda: store.snapshot("t", "task"),
            store.ping,
            store.counts,
        ):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as raised:
                call()
            assert time.monotonic() - started < 5
            assert not isinstance(raised.value, StoreOutcomeUnknown)
    finally:
        postgres.start()
    deadline = time.monotonic() + 10
    while True:
        try:
            store.ping()
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "the store did not recover"
            time.sleep(0.1)
    state = store.add_examples("t", "task", images(1, 6), ["d"], max_examples=10)
    assert (state.version, state.labels) == (2, {"a": 1, "b": 1, "d": 1})
    store.close()


def test_postgres_url_options() -> None:
    from server.store.postgres import parse_url, redacted

    conninfo, options = parse_url("postgresql://u:secret@db:5433/tasks?sslmode=disable&pool_max_size=8")
    assert "sslmode=disable" in conninfo and "port=5433" in conninfo and "connect_timeout=3" in conninfo
    assert options.pool_max_size == 8 and options.pool_timeout == 5.0
    assert "secret" not in redacted("postgresql://u:secret@db/tasks")
    with pytest.raises(StoreUnavailable):  # nothing listens there: gives up after startup_timeout
        open_store("postgresql://postgres@127.0.0.1:9/x?startup_timeout=0.5")


def test_postgres_resolves_a_commit_whose_answer_was_lost(postgres: PostgresServer) -> None:
    """What the store does when the connection drops during COMMIT: insert the write's commit marker
    itself. A write that committed is reported committed; one that did not is reported not committed and
    can never commit afterwards; one still running is waited for."""
    store = open_store(postgres.create_database())
    url = store.conninfo
    insert = "INSERT INTO commit_markers (token) VALUES (%s)"
    committed, rolled_back, running = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(url, autocommit=True) as conn:
        for marker, end in ((committed, "COMMIT"), (rolled_back, "ROLLBACK")):
            conn.execute("BEGIN")
            conn.execute(insert, (marker,))
            conn.execute(end)
    lost = psycopg.OperationalError("lost")
    assert store._committed(committed, lost) is True
    assert store._committed(rolled_back, lost) is False
    with psycopg.connect(url) as late, pytest.raises(psycopg.errors.UniqueViolation):
        late.execute(insert, (rolled_back,))  # the write that did not commit is fenced off for good

    with psycopg.connect(url) as writer, ThreadPoolExecutor(1) as pool:
        writer.execute(insert, (running,))  # inside a transaction that has not committed yet
        outcome = pool.submit(store._committed, running, lost)
        time.sleep(0.5)
        assert not outcome.done()  # waits for the write's transaction to end
        writer.commit()
        assert outcome.result(timeout=10) is True
    store.close()


def test_postgres_resolves_a_commit_lost_in_a_crash(postgres: PostgresServer) -> None:
    """A write in flight when PostgreSQL crashes did not commit, and the store says so even after new
    transactions have taken its transaction id again (a crash loses the ids that never reached the WAL,
    and PostgreSQL hands them out anew)."""
    store = open_store(postgres.create_database())
    marker = uuid.uuid4()
    writer = psycopg.connect(store.conninfo)
    writer.execute("INSERT INTO commit_markers (token) VALUES (%s)", (marker,))  # not committed
    postgres.kill()
    writer.close()
    postgres.start()
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        for _ in range(20):  # new transactions, with ids the lost one may have had
            conn.execute("INSERT INTO commit_markers (token) VALUES (%s)", (uuid.uuid4(),))
    assert store._committed(marker, psycopg.OperationalError("lost")) is False
    store.close()


@pytest.mark.slow
def test_postgres_crash_loop_loses_no_acknowledged_write(postgres: PostgresServer) -> None:
    """Two stores (two replicas) write and read from 6 threads while PostgreSQL is SIGKILLed and started
    again 10 times: every call returns or raises a ServiceError (never anything else), every acknowledged
    example is stored, and nothing unacknowledged is, except writes whose outcome was reported unknown."""
    from server.protocol import ServiceError

    url = postgres.create_database()
    stores = [open_store(url), open_store(url)]
    stop, lock = threading.Event(), threading.Lock()
    acked, unknown, unexpected = set(), set(), []

    def client(n: int) -> None:
        store, task, i = stores[n % 2], f"task{n % 2}", 0
        while not stop.is_set():
            label = f"c{n}-{i}"
            try:
                if i % 3 == 0:
                    store.add_examples("t", task, images(1, 1000 * n + i), [label], max_examples=10**9)
                    with lock:
                        acked.add((task, label))
                else:
                    (store.snapshot if i % 3 == 1 else store.label_examples)("t", task)
            except StoreOutcomeUnknown:
                with lock:
                    unknown.add((task, label))
            except ServiceError:
                time.sleep(0.02)
            except Exception as exc:  # noqa: BLE001 - the point of the test
                unexpected.append(repr(exc))
            i += 1

    with ThreadPoolExecutor(6) as pool:
        running = [pool.submit(client, n) for n in range(6)]
        for round_ in range(10):
            time.sleep(1.0 + 0.37 * (round_ % 3))
            postgres.kill()
            time.sleep(0.5)
            postgres.start()
        time.sleep(3)
        stop.set()
        for done in running:
            done.result()
    stored = {(task, label) for task in ("task0", "task1") for label in stores[0].snapshot("t", task).labels}
    assert not unexpected, unexpected[:5]
    assert acked and acked <= stored, sorted(acked - stored)[:5]
    assert stored - acked <= unknown, sorted(stored - acked - unknown)[:5]
    for store in stores:
        store.close()


def test_postgres_commit_markers_are_purged(postgres: PostgresServer) -> None:
    """Each write leaves a commit marker; a write deletes those older than MARKER_SECONDS (at most once
    per MARKER_SECONDS per process), so the table does not grow without bound."""
    from server.store.postgres import MARKER_SECONDS

    store = open_store(postgres.create_database())
    with psycopg.connect(store.conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO commit_markers (token, created_at) VALUES (%s, now() - make_interval(secs => %s))",
            (uuid.uuid4(), MARKER_SECONDS + 60),
        )
        store.add_examples("t", "task", images(1), ["a"], max_examples=10)
        store.add_examples("t", "task", images(1, 2), ["b"], max_examples=10)
        (left,) = conn.execute("SELECT count(*) FROM commit_markers").fetchone()
    assert left == 2  # the stale marker is gone; the two writes' markers stay for now
    store.close()
