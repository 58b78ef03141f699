"""Fixtures: a real server process per test module, a real PostgreSQL server, and Omniglot drawings."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from testkit import ServerProcess, free_port, omniglot, running_server
from testkit.postgres import PostgresServer, install_postgresql


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One open server per test module: no API keys, so it must ignore the host it is given."""
    with running_server(tmp_path_factory.mktemp("server") / "data", "--host", "0.0.0.0") as process:
        yield process


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


@pytest.fixture
def task_id() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def tibetan() -> list[list[bytes]]:
    """20 Tibetan characters (an evaluation alphabet: never seen in training), 20 drawers each."""
    return omniglot("Tibetan", 20, 20)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the session (installed with apt-get first if missing and possible)."""
    bindir = install_postgresql()
    if bindir is None:
        pytest.skip(f"PostgreSQL cannot run here: {install_postgresql.reason}")
    server = PostgresServer(bindir, free_port()).start()
    try:
        yield server
    finally:
        server.remove()
