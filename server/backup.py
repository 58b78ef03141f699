"""Online backups of the task store (``metanet backup DEST``) and restores (``metanet restore SRC``).

- SQLite: SQLite's online backup API copies the whole database in one step, inside one read
  transaction, so the copy is the store as of one commit; the server keeps writing meanwhile (in WAL
  mode a reader never blocks a writer). The copy goes to
  ``DEST.partial``, is switched to a single-file journal, checked (``PRAGMA integrity_check``, its
  schema), flushed to disk and renamed to DEST.
- PostgreSQL: ``pg_dump --format=custom``, which reads the whole database in one snapshot (consistent
  while replicas write), restored by ``pg_restore --clean --if-exists --single-transaction``.

A restore replaces the whole store and is done with the server (every replica) stopped: its workers
cache what they derived from the store by task incarnation and version, which a restore rewinds. It
also deletes the derived-memory files of the data folder (a cache, rebuilt on use).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


class BackupError(RuntimeError):
    """The backup or restore could not be made; the message says why. Nothing was replaced."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    bytes: int
    seconds: float
    tasks: int | None  # counted in a SQLite copy; None for a PostgreSQL dump
    examples: int | None


def _sqlite_path(url: str) -> Path | None:
    scheme, sep, rest = url.partition("://")
    if sep and scheme == "sqlite":
        return Path(rest[1:])
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_sqlite_copy(path: Path) -> tuple[int, int]:
    """Raise BackupError unless ``path`` is a sound task store; its (tasks, examples)."""
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            (verdict,) = con.execute("PRAGMA integrity_check").fetchone()
            if verdict != "ok":
                raise BackupError(f"{path}: integrity check failed: {verdict}")
            con.execute("SELECT max(version) FROM schema_migrations").fetchone()
            return (
                con.execute("SELECT count(*) FROM tasks").fetchone()[0],
                con.execute("SELECT count(*) FROM examples").fetchone()[0],
            )
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{path} is not a task store: {exc}") from exc


def _pg_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(f"{name} not found on PATH: install PostgreSQL's client tools (postgresql-client)")
    return found


def _pg_conninfo(url: str) -> str:
    from server.store.postgres import parse_url  # psycopg only when PostgreSQL is used

    return parse_url(url)[0]


def backup(store_url: str, dest: Path) -> BackupSummary:
    """A consistent copy of the store at ``store_url`` in ``dest`` (replaced if it exists), taken while the
    server runs."""
    started = time.perf_counter()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".partial")
    partial.unlink(missing_ok=True)
    source = _sqlite_path(store_url)
    tasks = examples = None
    if source is not None:
        if not source.exists():
            raise BackupError(f"no task store at {source}")
        src = sqlite3.connect(source, timeout=30)
        copy = sqlite3.connect(partial)
        try:
            src.backup(copy)  # every page in one step: one read transaction, one commit's state
            copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        finally:
            copy.close()
            src.close()
        tasks, examples = _check_sqlite_copy(partial)
    else:
        command = [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(partial)]
        command += ["--dbname", _pg_conninfo(store_url)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise BackupError(f"pg_dump failed: {result.stderr.strip()}")
    _fsync(partial)
    partial.replace(dest)
    _fsync(dest.parent)
    return BackupSummary(dest, dest.stat().st_size, time.perf_counter() - started, tasks, examples)


def restore(source: Path, store_url: str, derived_dir: Path | None) -> BackupSummary:
    """Replace the store at ``store_url`` with the backup ``source`` (the server must be stopped), and
    delete the derived-memory files in ``derived_dir``."""
    started = time.perf_counter()
    source = Path(source)
    if not source.is_file():
        raise BackupError(f"no backup at {source}")
    target = _sqlite_path(store_url)
    tasks = examples = None
    if target is not None:
        tasks, examples = _check_sqlite_copy(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
        dst = sqlite3.connect(target, timeout=30)
        try:
            src.backup(dst)  # through SQLite: the target's write-ahead log is handled, all or nothing
        finally:
            dst.close()
            src.close()
    else:
        command = [_pg_tool("pg_restore"), "--clean", "--if-exists", "--single-transaction", "--no-owner"]
        result = subprocess.run(
            command + ["--dbname", _pg_conninfo(store_url), str(source)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise BackupError(f"pg_restore failed: {result.stderr.strip()}")
    if derived_dir is not None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(derived_dir)
    return BackupSummary(source, source.stat().st_size, time.perf_counter() - started, tasks, examples)
