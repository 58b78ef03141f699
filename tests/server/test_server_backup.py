"""``metanet backup`` while support calls stream into a real server (SQLite), and ``metanet restore``: each
backup is one commit's state (every example acknowledged before it started, every task whole) and a
restored server holds every acknowledged example. PostgreSQL: the same with pg_dump and pg_restore,
under writers on a real PostgreSQL server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from server.store import open_store
from testkit import REPO, ServerProcess, in_threads, support_body
from testkit.postgres import PostgresServer

WRITERS = 3


def metanet(*args: str, env: dict[str, str] | None = None) -> str:
    """``metanet ARGS`` (server/cli.py) as its own process; its output."""
    command = [sys.executable, "-m", "server.cli", *args]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


class Ledger:
    """Labels acknowledged per task, one writer per task, in order (each support call adds one)."""

    def __init__(self, tasks: list[str]) -> None:
        self.lock = threading.Lock()
        self.acked = {task: [] for task in tasks}

    def add(self, task: str, label: str) -> None:
        with self.lock:
            self.acked[task].append(label)

    def copy(self) -> dict[str, list[str]]:
        with self.lock:
            return {task: list(labels) for task, labels in self.acked.items()}


def backups_under_writes(
    write: Callable[[str, int], None], ledger: Ledger, backup: Callable[[int], None], count: int
) -> list[dict[str, list[str]]]:
    """Writers stream one-example writes (``write(task, i)`` acknowledges label ``task-i`` in the ledger)
    while ``backup(n)`` runs ``count`` times; what was acknowledged before each backup started."""
    stop, started = threading.Event(), threading.Event()
    before = []

    def writer(task: str) -> None:
        for i in range(100_000):
            if stop.is_set():
                return
            write(task, i)
            if i == 3:
                started.set()

    with in_threads(writer, [(task,) for task in ledger.acked]):
        try:
            assert started.wait(180), "writes did not come through"
            for n in range(count):
                before.append(ledger.copy())
                backup(n)
        finally:
            stop.set()
    return before


def check_backup(acked_before: dict[str, list[str]], acked_after: dict[str, list[str]], url: str) -> None:
    """The backup holds every example acknowledged before it started, only acknowledged ones, and each
    task whole: as many examples as versions."""
    store = open_store(url)
    try:
        for task, labels in acked_before.items():
            snapshot = store.snapshot("default", task)
            stored = snapshot.labels if snapshot else []
            assert stored[: len(labels)] == labels, f"{task}: lost acknowledged examples"
            assert stored == acked_after[task][: len(stored)], f"{task}: holds unacknowledged examples"
            if snapshot:
                assert snapshot.state.version == snapshot.state.num_examples == len(stored)
    finally:
        store.close()


@pytest.mark.timeout(1200)  # two server starts and four command-line runs; minutes on a busy CPU
def test_sqlite_backup_while_the_server_writes_then_restore(tmp_path, tibetan) -> None:
    server = ServerProcess(tmp_path / "data").start()
    ledger = Ledger([f"w{n}" for n in range(WRITERS)])
    clients = {task: httpx.Client(base_url=server.url, timeout=120) for task in ledger.acked}

    def write(task: str, i: int) -> None:
        body = support_body([(f"{task}-{i}", tibetan[i % 20][i % 19])])
        answer = clients[task].post(f"/tasks/{task}/support", json=body)
        assert answer.status_code == 200, answer.text
        ledger.add(task, f"{task}-{i}")

    def backup(n: int) -> None:
        out = metanet("backup", str(tmp_path / f"backup-{n}.sqlite3"), "--data-dir", str(server.data_dir))
        assert out.startswith(f"backed up to {tmp_path / f'backup-{n}.sqlite3'}")

    try:
        before = backups_under_writes(write, ledger, backup, 3)
        after = ledger.copy()
        assert sum(map(len, after.values())) > sum(map(len, before[-1].values())), "no write during backups"
        for n, acked in enumerate(before):
            scratch = tmp_path / f"opened-{n}.sqlite3"  # opening a store switches it to WAL: keep the backup
            shutil.copy(tmp_path / f"backup-{n}.sqlite3", scratch)
            check_backup(acked, after, f"sqlite:///{scratch}")

        # Restore the last backup taken under writes into the server's data dir (server stopped): every
        # example acknowledged before that backup is served again.
        server.kill()
        metanet("restore", str(tmp_path / "backup-2.sqlite3"), "--data-dir", str(server.data_dir))
        server.start()
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for task, labels in before[-1].items():
                stored = http.get(f"/tasks/{task}").json()["labels"]
                assert set(labels) <= set(stored)
    finally:
        for http in clients.values():
            http.close()
        server.stop()


def test_postgres_backup_under_writes_and_restore_into_another_database(
    postgres: PostgresServer, tmp_path
) -> None:
    source = postgres.create_database()
    ledger = Ledger([f"w{n}" for n in range(WRITERS)])
    stores = {task: open_store(source) for task in ledger.acked}
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (50, 28, 28), dtype=np.uint8)

    def write(task: str, i: int) -> None:
        stores[task].add_examples("default", task, pixels[i % 50 : i % 50 + 1], [f"{task}-{i}"], 100_000)
        ledger.add(task, f"{task}-{i}")

    env = {**os.environ, "PATH": f"{postgres.bindir}:{os.environ['PATH']}"}  # its pg_dump, pg_restore

    def backup(n: int) -> None:
        metanet("backup", str(tmp_path / f"pg-{n}.dump"), "--store", source, env=env)

    try:
        before = backups_under_writes(write, ledger, backup, 2)
    finally:
        for store in stores.values():
            store.close()
    after = ledger.copy()
    for n, acked in enumerate(before):
        target = postgres.create_database()
        open_store(target).close()  # a server's store already there: restore replaces it
        metanet("restore", str(tmp_path / f"pg-{n}.dump"), "--store", target, env=env)
        check_backup(acked, after, target)


@pytest.mark.parametrize("command", ["backup", "restore"])
def test_backup_and_restore_refuse_what_is_not_there(tmp_path, command: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", command, str(tmp_path / "none"), "--data-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1 and "error: no " in done.stderr
