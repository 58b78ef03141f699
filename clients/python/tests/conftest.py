"""Fixtures: real server processes (open, and with API keys), Omniglot drawings, unique task ids.

The SDK is imported from this source tree, installed or not.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from testkit import REPO, omniglot, running_server

sys.path.insert(0, str(REPO / "clients/python/src"))

API_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
SLOW_KEY = "slow-secret-key"  # tenant "slow", limited to one request a second


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with no API keys (one tenant, loopback only)."""
    with running_server(tmp_path_factory.mktemp("server-open") / "data") as server:
        yield server.url


@pytest.fixture(scope="session")
def auth_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that requires the API keys of `API_KEYS` (tenant -> key), and `SLOW_KEY`."""
    folder = tmp_path_factory.mktemp("server-auth")
    keys_file = folder / "api-keys"
    keys = "".join(f"{tenant}:{key}\n" for tenant, key in API_KEYS.items())
    keys_file.write_text(f"{keys}slow:{SLOW_KEY} requests_per_second=1\n")
    with running_server(folder / "data", "--api-keys-file", str(keys_file)) as server:
        yield server.url


@pytest.fixture(scope="session")
def api_keys() -> dict[str, str]:
    """tenant -> API key of `auth_server_url`."""
    return API_KEYS


@pytest.fixture(scope="session")
def slow_key() -> str:
    """An API key of `auth_server_url` whose tenant may send one request a second."""
    return SLOW_KEY


@pytest.fixture(scope="session")
def drawings() -> list[list[bytes]]:
    """Omniglot PNGs of 12 Tibetan characters: drawings[character][drawer], 20 drawers each."""
    return omniglot("Tibetan", 12)


@pytest.fixture(scope="session")
def strangers() -> list[bytes]:
    """One Omniglot PNG of each of 5 Atlantean characters (an alphabet `drawings` does not use)."""
    return [first for (first,) in omniglot("Atlantean", 5, drawers=1)]


@pytest.fixture
def task_id() -> str:
    return f"sdk-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Stub(BaseHTTPRequestHandler):
    """A stand-in server answering scripted statuses, for the 5xx answers and retries that the real
    server cannot be made to produce. `seen` lists the requests it got."""

    url = ""
    answers: list[tuple[int, bytes]] = []
    seen: list[str] = []
    extra_headers: dict[str, str] = {}  # sent with every answer
    keys: list[str | None] = []  # the Idempotency-Key header of each request seen

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(f"{self.command} {self.path}")
        self.keys.append(self.headers.get("Idempotency-Key"))
        status, body = self.answers.pop(0) if self.answers else (200, b'{"status": "ok"}')
        self.send_response(status)
        for name, value in self.extra_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[type[Stub]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Stub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Stub.url, Stub.answers, Stub.seen, Stub.keys = f"http://127.0.0.1:{server.server_port}", [], [], []
    Stub.extra_headers = {}
    yield Stub
    server.shutdown()
    server.server_close()
