"""The task store: the durable source of truth for support examples (docs/SERVER.md, "How it works").

Fast weights, memory keys and FAISS indexes are derived from what is stored here. ``TaskStore`` is the
interface a networked backend implements; ``SQLiteTaskStore`` is the embedded default (WAL mode,
``synchronous=FULL``: a call returns only after its commit is on disk).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class ExampleLimitError(Exception):
    """Adding the examples would take the task over its example limit."""


class LabelNotFoundError(Exception):
    """The task has no example of that label."""


@dataclass(frozen=True)
class TaskState:
    """One task at one version.

    ``uid`` names this incarnation of the task (never reused, so a task deleted and created again is a new
    one); ``rebuild_version`` is the last version that removed examples: derived memory from an older
    version cannot be extended, only rebuilt.
    """

    uid: int
    task_id: str
    version: int
    rebuild_version: int
    labels: dict[str, int]  # label -> example count, in order of first appearance

    @property
    def num_examples(self) -> int:
        return sum(self.labels.values())


@dataclass(frozen=True)
class TaskSnapshot:
    """A task state and the examples added after ``since_version``, oldest first."""

    state: TaskState
    since_version: int
    images: np.ndarray  # uint8 [n, H, W]
    labels: list[str]


@dataclass(frozen=True)
class StoreCounts:
    tenants: int
    tasks: int
    examples: int


class TaskStore(ABC):
    """Tenants, tasks, versions, labels and preprocessed support images."""

    @abstractmethod
    def add_examples(
        self, tenant: str, task_id: str, images: np.ndarray, labels: list[str], max_examples: int
    ) -> TaskState:
        """Durably add examples (creating the task if needed) as one new version; all or nothing."""

    @abstractmethod
    def get_task(self, tenant: str, task_id: str) -> TaskState | None: ...

    @abstractmethod
    def snapshot(self, tenant: str, task_id: str, since_version: int = 0) -> TaskSnapshot | None:
        """The current state and the examples added after ``since_version``, read consistently."""

    @abstractmethod
    def forget_label(self, tenant: str, task_id: str, label: str) -> TaskState | None:
        """Remove every example of ``label`` as one new version; None if the task is unknown."""

    @abstractmethod
    def delete_task(self, tenant: str, task_id: str) -> bool:
        """Remove the task and everything stored for it; False if it did not exist."""

    @abstractmethod
    def list_tasks(self, tenant: str) -> list[TaskState]:
        """The tenant's tasks, most recently changed first."""

    @abstractmethod
    def label_examples(self, tenant: str, task_id: str) -> tuple[TaskState, dict[str, np.ndarray]] | None:
        """The task's state and the first stored image (uint8 [H, W]) of every label, in label order,
        read consistently; None if the task is unknown."""

    @abstractmethod
    def counts(self) -> StoreCounts: ...

    @abstractmethod
    def ping(self) -> None:
        """Raise if the store cannot be reached."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    name TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    uid INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL REFERENCES tenants(name),
    task_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    rebuild_version INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL,
    UNIQUE (tenant, task_id)
);
CREATE TABLE IF NOT EXISTS examples (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_uid INTEGER NOT NULL REFERENCES tasks(uid) ON DELETE CASCADE,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    image BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS examples_by_task ON examples (task_uid, version);
CREATE INDEX IF NOT EXISTS examples_by_label ON examples (task_uid, label);
"""


class SQLiteTaskStore(TaskStore):
    """SQLite task store; safe to share between threads and (after fork or spawn) processes."""

    def __init__(self, path: str | Path, image_shape: tuple[int, int] = (28, 28), busy_timeout: float = 30.0):
        self.path = Path(path)
        self.image_shape = image_shape
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._connection()
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(_SCHEMA)

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

    def add_examples(
        self, tenant: str, task_id: str, images: np.ndarray, labels: list[str], max_examples: int
    ) -> TaskState:
        if len(images) != len(labels) or images.shape[1:] != self.image_shape or images.dtype != np.uint8:
            raise ValueError("images must be uint8 [n, *image_shape] with one label each")
        now = time.time()
        with self._transaction(write=True) as con:
            state = self._state(con, tenant, task_id)
            stored = state.num_examples if state else 0
            if stored + len(labels) > max_examples:
                raise ExampleLimitError(
                    f"task holds {stored} examples; {len(labels)} more exceed the limit of {max_examples}"
                )
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
                "INSERT INTO examples (task_uid, label, version, image) VALUES (?, ?, ?, ?)",
                [(uid, label, version, image.tobytes()) for label, image in zip(labels, images, strict=True)],
            )
            return self._state(con, tenant, task_id)

    def get_task(self, tenant: str, task_id: str) -> TaskState | None:
        with self._transaction(write=False) as con:
            return self._state(con, tenant, task_id)

    def snapshot(self, tenant: str, task_id: str, since_version: int = 0) -> TaskSnapshot | None:
        with self._transaction(write=False) as con:
            state = self._state(con, tenant, task_id)
            if state is None:
                return None
            rows = con.execute(
                "SELECT label, image FROM examples WHERE task_uid = ? AND version > ? ORDER BY id",
                (state.uid, since_version),
            ).fetchall()
        pixels = bytearray(b"".join(r[1] for r in rows))  # writable, as torch.as_tensor prefers
        images = np.frombuffer(pixels, dtype=np.uint8).reshape(-1, *self.image_shape)
        return TaskSnapshot(state, since_version, images, [r[0] for r in rows])

    def forget_label(self, tenant: str, task_id: str, label: str) -> TaskState | None:
        with self._transaction(write=True) as con:
            state = self._state(con, tenant, task_id)
            if state is None:
                return None
            if label not in state.labels:
                raise LabelNotFoundError(label)
            version = state.version + 1
            con.execute("DELETE FROM examples WHERE task_uid = ? AND label = ?", (state.uid, label))
            con.execute(
                "UPDATE tasks SET version = ?, rebuild_version = ?, updated_at = ? WHERE uid = ?",
                (version, version, time.time(), state.uid),
            )
            return self._state(con, tenant, task_id)

    def delete_task(self, tenant: str, task_id: str) -> bool:
        with self._transaction(write=True) as con:
            return (
                con.execute("DELETE FROM tasks WHERE tenant = ? AND task_id = ?", (tenant, task_id)).rowcount
                > 0
            )

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
                "SELECT label, image FROM examples WHERE id IN "
                "(SELECT MIN(id) FROM examples WHERE task_uid = ? GROUP BY label) ORDER BY id",
                (state.uid,),
            ).fetchall()
        return state, {
            label: np.frombuffer(image, dtype=np.uint8).reshape(self.image_shape) for label, image in rows
        }

    def counts(self) -> StoreCounts:
        with self._transaction(write=False) as con:
            tenants, tasks, examples = (
                con.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("tenants", "tasks", "examples")
            )
        return StoreCounts(tenants, tasks, examples)

    def ping(self) -> None:
        self._connection().execute("SELECT 1 FROM tasks LIMIT 1").fetchall()
