"""``SQLiteTaskStore``: the embedded default (WAL mode, ``synchronous=FULL``: a call returns only after its
commit is on disk). One machine only: every process of the server shares the file."""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from server.protocol import ExampleLimit, IdempotencyKeyReused, LabelNotFound, TaskExists
from server.store.base import (
    IDEMPOTENCY_TTL,
    StorageQuota,
    StoreCounts,
    TaskSnapshot,
    TaskState,
    TaskStore,
    TaskVersion,
    Written,
    image_digest,
    pixels_to_images,
    request_fingerprint,
    state_from_json,
    state_to_json,
)
from server.store.migrations import SQLITE

logger = logging.getLogger("metanet.store")
PURGE_SECONDS = 600.0  # how often a process deletes expired idempotency keys (expiry is checked on read)


class SQLiteTaskStore(TaskStore):
    """SQLite task store; safe to share between threads and (after fork or spawn) processes."""

    def __init__(
        self,
        path: str | Path,
        image_shape: tuple[int, int] = (28, 28),
        busy_timeout: float = 30.0,
        idempotency_ttl: float = IDEMPOTENCY_TTL,
    ):
        self.path = Path(path)
        self.image_shape = image_shape
        self.busy_timeout = busy_timeout
        self.idempotency_ttl = idempotency_ttl
        self._next_purge = 0.0
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._enable_wal()
        self._migrate()

    def _enable_wal(self) -> None:
        """Switch the file to WAL. The switch needs the file to itself for a moment, and SQLite answers
        "database is locked" at once, without its busy timeout, while another process or thread is
        opening the file too (replicas starting together): try again until ``busy_timeout``."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                self._connection().execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _connection(self) -> sqlite3.Connection:
        # One connection per thread and process: sqlite3 connections must not cross a fork.
        con = getattr(self._local, "con", None)
        if con is None or self._local.pid != os.getpid():
            con = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None)
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA secure_delete=ON")
            self._local.con, self._local.pid = con, os.getpid()
        return con

    def _migrate(self) -> None:
        con = self._connection()
        con.create_function("sha256", 1, lambda data: hashlib.sha256(data).digest(), deterministic=True)
        with self._transaction(write=True) as con:  # BEGIN IMMEDIATE: one process migrates at a time
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations "
                "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
            )
            applied = {v for (v,) in con.execute("SELECT version FROM schema_migrations")}
            for migration in SQLITE:
                if migration.version in applied:
                    continue
                for statement in migration.statements:
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (migration.version, migration.name, time.time()),
                )
                logger.info(
                    "task store %s: applied migration %d (%s)", self.path, migration.version, migration.name
                )

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        con = self._connection()
        con.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield con
        except BaseException:
            con.execute("ROLLBACK")
            raise
        con.execute("COMMIT")

    @staticmethod
    def _state(con: sqlite3.Connection, tenant: str, task_id: str) -> TaskState | None:
        row = con.execute(
            "SELECT uid, version, rebuild_version FROM tasks WHERE tenant = ? AND task_id = ?",
            (tenant, task_id),
        ).fetchone()
        if row is None:
            return None
        uid, version, rebuild_version = row
        counts = con.execute(
            "SELECT label, COUNT(*) FROM examples WHERE task_uid = ? GROUP BY label ORDER BY MIN(id)", (uid,)
        ).fetchall()
        return TaskState(uid, task_id, version, rebuild_version, dict(counts))

    def _check_quota(
        self, con: sqlite3.Connection, tenant: str, new_task: bool, digests: list[bytes], quota: StorageQuota
    ) -> None:
        (tasks,) = con.execute("SELECT COUNT(*) FROM tasks WHERE tenant = ?", (tenant,)).fetchone()
        (examples,) = con.execute("SELECT COUNT(*) FROM examples WHERE tenant = ?", (tenant,)).fetchone()
        (images,) = con.execute("SELECT COUNT(*) FROM images WHERE tenant = ?", (tenant,)).fetchone()
        unique = list(set(digests))
        marks = ",".join("?" * len(unique))
        stored = con.execute(
            f"SELECT COUNT(*) FROM images WHERE tenant = ? AND digest IN ({marks})", (tenant, *unique)
        ).fetchone()[0]
        pixels = self.image_shape[0] * self.image_shape[1]
        quota.check(
            tenant, tasks + new_task, examples + len(digests), (images + len(unique) - stored) * pixels
        )

    def write_examples(
        self,
        tenant: str,
        task_id: str,
        images: np.ndarray,
        labels: list[str],
        max_examples: int,
        idempotency_key: str | None = None,
        new_task: bool = False,
        quota: StorageQuota | None = None,
    ) -> Written:
        self.check_images(images, labels)
        now = time.time()
        digests = [image_digest(image) for image in images]
        kind = "import" if new_task else "support"
        with self._transaction(write=True) as con:  # BEGIN IMMEDIATE: writers, and so keys, serialize
            if idempotency_key is not None:
                fingerprint = request_fingerprint(kind, task_id, labels, digests)
                row = con.execute(
                    "SELECT fingerprint, result, created_at FROM idempotency_keys "
                    "WHERE tenant = ? AND key = ?",
                    (tenant, idempotency_key),
                ).fetchone()
                if row is not None and row[2] > now - self.idempotency_ttl:
                    if row[0] != fingerprint:
                        raise IdempotencyKeyReused(
                            "this Idempotency-Key was sent before with another request: use a new key"
                        )
                    return Written(state_from_json(row[1]), replayed=True)
            state = self._state(con, tenant, task_id)
            if new_task and state is not None:
                raise TaskExists(f"task {task_id!r} exists: delete it first or import under another id")
            stored = state.num_examples if state else 0
            if stored + len(labels) > max_examples:
                raise ExampleLimit(
                    f"task holds {stored} examples; {len(labels)} more exceed the limit of {max_examples}"
                )
            if quota is not None:
                self._check_quota(con, tenant, state is None, digests, quota)
            if state is None:
                con.execute("INSERT OR IGNORE INTO tenants (name, created_at) VALUES (?, ?)", (tenant, now))
                uid = con.execute(
                    "INSERT INTO tasks (tenant, task_id, version, updated_at) VALUES (?, ?, 1, ?)",
                    (tenant, task_id, now),
                ).lastrowid
                version = 1
            else:
                uid, version = state.uid, state.version + 1
                con.execute("UPDATE tasks SET version = ?, updated_at = ? WHERE uid = ?", (version, now, uid))
            con.executemany(
                "INSERT OR IGNORE INTO images (tenant, digest, pixels) VALUES (?, ?, ?)",
                [(tenant, digest, image.tobytes()) for digest, image in zip(digests, images, strict=True)],
            )
            con.executemany(
                "INSERT INTO examples (task_uid, tenant, label, version, digest) VALUES (?, ?, ?, ?, ?)",
                [(uid, tenant, label, version, d) for label, d in zip(labels, digests, strict=True)],
            )
            written = self._state(con, tenant, task_id)
            if idempotency_key is not None:
                con.execute(
                    "INSERT OR REPLACE INTO idempotency_keys "
                    "(tenant, key, fingerprint, task_id, result, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (tenant, idempotency_key, fingerprint, task_id, state_to_json(written), now),
                )
            self._purge_keys(con, now)
            return Written(written)

    def _purge_keys(self, con: sqlite3.Connection, now: float) -> None:
        """Delete expired idempotency keys, at most once per PURGE_SECONDS per process."""
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_SECONDS
        con.execute("DELETE FROM idempotency_keys WHERE created_at <= ?", (now - self.idempotency_ttl,))

    def get_task(self, tenant: str, task_id: str) -> TaskState | None:
        with self._transaction(write=False) as con:
            return self._state(con, tenant, task_id)

    def current_version(self, tenant: str, task_id: str) -> TaskVersion | None:
        row = (
            self._connection()
            .execute("SELECT uid, version FROM tasks WHERE tenant = ? AND task_id = ?", (tenant, task_id))
            .fetchone()
        )
        return None if row is None else TaskVersion(*row)

    def snapshot(self, tenant: str, task_id: str, since_version: int = 0) -> TaskSnapshot | None:
        with self._transaction(write=False) as con:
            state = self._state(con, tenant, task_id)
            if state is None:
                return None
            rows = con.execute(
                "SELECT e.label, i.pixels FROM examples e JOIN images i ON i.tenant = e.tenant "
                "AND i.digest = e.digest WHERE e.task_uid = ? AND e.version > ? ORDER BY e.id",
                (state.uid, since_version),
            ).fetchall()
        images = pixels_to_images([r[1] for r in rows], self.image_shape)
        return TaskSnapshot(state, since_version, images, [r[0] for r in rows])

    @staticmethod
    def _drop_unused_images(con: sqlite3.Connection, tenant: str, digests: list[bytes]) -> None:
        con.executemany(
            "DELETE FROM images WHERE tenant = ? AND digest = ? AND NOT EXISTS "
            "(SELECT 1 FROM examples e WHERE e.tenant = images.tenant AND e.digest = images.digest)",
            [(tenant, digest) for digest in set(digests)],
        )

    def forget_label(self, tenant: str, task_id: str, label: str) -> TaskState | None:
        with self._transaction(write=True) as con:
            state = self._state(con, tenant, task_id)
            if state is None:
                return None
            if label not in state.labels:
                raise LabelNotFound(f"task {task_id!r} has no label {label!r}")
            version = state.version + 1
            digests = con.execute(
                "DELETE FROM examples WHERE task_uid = ? AND label = ? RETURNING digest", (state.uid, label)
            ).fetchall()
            self._drop_unused_images(con, tenant, [d for (d,) in digests])
            con.execute(
                "UPDATE tasks SET version = ?, rebuild_version = ?, updated_at = ? WHERE uid = ?",
                (version, version, time.time(), state.uid),
            )
            return self._state(con, tenant, task_id)

    def delete_task(self, tenant: str, task_id: str) -> bool:
        with self._transaction(write=True) as con:
            row = con.execute(
                "SELECT uid FROM tasks WHERE tenant = ? AND task_id = ?", (tenant, task_id)
            ).fetchone()
            if row is None:
                return False
            digests = con.execute("DELETE FROM examples WHERE task_uid = ? RETURNING digest", row).fetchall()
            con.execute("DELETE FROM tasks WHERE uid = ?", row)
            self._drop_unused_images(con, tenant, [d for (d,) in digests])
            return True

    def list_tasks(self, tenant: str) -> list[TaskState]:
        with self._transaction(write=False) as con:
            ids = con.execute(
                "SELECT task_id FROM tasks WHERE tenant = ? ORDER BY updated_at DESC, uid DESC", (tenant,)
            ).fetchall()
            return [self._state(con, tenant, task_id) for (task_id,) in ids]

    def label_examples(self, tenant: str, task_id: str) -> tuple[TaskState, dict[str, np.ndarray]] | None:
        with self._transaction(write=False) as con:
            state = self._state(con, tenant, task_id)
            if state is None:
                return None
            rows = con.execute(
                "SELECT e.label, i.pixels FROM examples e JOIN images i ON i.tenant = e.tenant "
                "AND i.digest = e.digest WHERE e.id IN "
                "(SELECT MIN(id) FROM examples WHERE task_uid = ? GROUP BY label) ORDER BY e.id",
                (state.uid,),
            ).fetchall()
        pixels = pixels_to_images([r[1] for r in rows], self.image_shape)
        return state, {label: image for (label, _), image in zip(rows, pixels, strict=True)}

    def counts(self) -> StoreCounts:
        with self._transaction(write=False) as con:
            return StoreCounts(
                *(
                    con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                    for table in ("tenants", "tasks", "examples", "images")
                )
            )

    def ping(self) -> None:
        self._connection().execute("SELECT 1 FROM tasks LIMIT 1").fetchall()

    def schema_version(self) -> int:
        return self._connection().execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None and self._local.pid == os.getpid():
            con.close()
        self._local = threading.local()
