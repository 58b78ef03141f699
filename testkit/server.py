"""``python -m server`` as a real process on a free port, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from model.checkpoint import DEFAULT_CHECKPOINT

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / DEFAULT_CHECKPOINT
STARTUP_SECONDS = 180


class ServerStartError(RuntimeError):
    """The server exited, or was not healthy in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m server`` (or ``module``, which takes the same ``--port``, ``--data-dir`` and
    ``--checkpoint``) in its own process group, so that a kill takes its workers down with it. Its log is
    ``<data_dir>.log``; ``args`` are extra command-line options."""

    def __init__(
        self, data_dir: Path, *args: str, env: dict[str, str] | None = None, module: str = "server"
    ) -> None:
        self.module = module
        self.data_dir = data_dir
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        """Start and wait until ``GET /health`` answers 200."""
        command = [
            sys.executable,
            "-m",
            self.module,
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
        ]
        command += ["--checkpoint", str(CHECKPOINT), *self.args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.healthy():
            if self.process.poll() is not None:
                raise ServerStartError(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"server not healthy after {STARTUP_SECONDS} s:\n{self.log()}")
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self, tail: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def kill(self) -> None:
        """SIGKILL the whole server: no shutdown code runs anywhere."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        """SIGTERM, as ``docker stop`` would; SIGKILL whatever is left of the group after 30 s."""
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        # Give orphaned children in the group a moment; then make sure none is left.
        time.sleep(0.2)
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)


@contextlib.contextmanager
def running_server(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """A started server, stopped on exit."""
    server = ServerProcess(data_dir, *args, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def assert_acknowledged_kept(http: httpx.Client, acknowledged: dict[str, list[str]]) -> None:
    """Every label a support call acknowledged is stored in its task (``GET /tasks/{id}`` on ``http``),
    with at most one more: the call in flight when the server died, committed but unanswered."""
    for task, labels in acknowledged.items():
        stored = http.get(f"/tasks/{task}").json()["labels"]
        assert set(labels) <= set(stored), f"{task}: lost {set(labels) - set(stored)}"
        assert len(stored) - len(labels) <= 1, f"{task}: {len(stored) - len(labels)} unacknowledged"
