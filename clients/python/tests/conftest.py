"""Fixtures: real server processes (open, and with API keys), Omniglot drawings, unique task ids.

The SDK is imported from this source tree, installed or not.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[3]
SDK_SRC = REPO / "clients/python/src"
sys.path.insert(0, str(SDK_SRC))

OMNIGLOT_ZIP = REPO.parent / "shared/data/omniglot/images_evaluation.zip"
API_KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key"}
STARTUP_SECONDS = 180


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serve(folder: Path, *extra_args: str) -> Iterator[str]:
    """Start `python -m server` on a free port, wait for GET /health == 200, yield its URL."""
    port = _free_port()
    log_path = folder / "server.log"
    command = [sys.executable, "-m", "server", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--data-dir", str(folder / "data"), *extra_args]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {STARTUP_SECONDS} s:\n{log_path.read_text()[-4000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server with no API keys (one tenant, loopback only)."""
    yield from _serve(tmp_path_factory.mktemp("server-open"))


@pytest.fixture(scope="session")
def auth_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that requires the API keys of `API_KEYS` (tenant -> key)."""
    folder = tmp_path_factory.mktemp("server-auth")
    keys_file = folder / "api-keys"
    keys_file.write_text("".join(f"{tenant}:{key}\n" for tenant, key in API_KEYS.items()))
    yield from _serve(folder, "--api-keys-file", str(keys_file))


@pytest.fixture(scope="session")
def api_keys() -> dict[str, str]:
    """tenant -> API key of `auth_server_url`."""
    return API_KEYS


@pytest.fixture(scope="session")
def drawings() -> list[list[bytes]]:
    """Omniglot PNGs of 12 Tibetan characters: drawings[character][drawer], 20 drawers each."""
    by_character: dict[str, list[str]] = defaultdict(list)
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        for name in archive.namelist():
            if name.startswith("images_evaluation/Tibetan/") and name.endswith(".png"):
                by_character[name.split("/")[2]].append(name)
        characters = sorted(by_character)[:12]
        return [[archive.read(name) for name in sorted(by_character[c])] for c in characters]


@pytest.fixture(scope="session")
def strangers() -> list[bytes]:
    """One Omniglot PNG of each of 5 Atlantean characters (an alphabet `drawings` does not use)."""
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("images_evaluation/Atlantean/"))
        firsts = {n.rsplit("/", 1)[0]: n for n in reversed(names) if n.endswith(".png")}
        return [archive.read(firsts[c]) for c in sorted(firsts)[:5]]


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

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append(f"{self.command} {self.path}")
        status, body = self.answers.pop(0) if self.answers else (200, b'{"status": "ok"}')
        self.send_response(status)
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
    Stub.url, Stub.answers, Stub.seen = f"http://127.0.0.1:{server.server_port}", [], []
    yield Stub
    server.shutdown()
    server.server_close()
