"""A throwaway PostgreSQL server for tests: Debian's ``postgresql`` package (installed with apt-get when
missing and we are root), ``initdb`` into a temporary folder, ``postgres`` on a free port as the
``postgres`` user (PostgreSQL refuses to run as root), in its own process group so a test can SIGKILL
every process of it and start it again on the same data."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

STARTUP_SECONDS = 60


def _bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    if found:
        return found[-1].parent
    postgres = shutil.which("postgres")
    return Path(postgres).parent if postgres else None


def install_postgresql() -> Path | None:
    """Find PostgreSQL, installing Debian's package first when it is missing and apt-get can (as root).
    None when neither works; the reason is then in ``install_postgresql.reason``."""
    if (found := _bindir()) is not None:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        install_postgresql.reason = "no PostgreSQL server binary, and apt-get is unavailable (or not root)"
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    with open("/tmp/metanet-apt.lock", "w") as lock:  # one installer at a time across test sessions
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _bindir() is None and subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, capture_output=True)
            result = subprocess.run(install, env=env, capture_output=True, text=True)
            if result.returncode != 0:
                install_postgresql.reason = f"apt-get install postgresql failed: {result.stderr[-500:]}"
                return None
    return _bindir()


install_postgresql.reason = ""


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:<free port>."""

    def __init__(self, bindir: Path, port: int) -> None:
        self.bindir = bindir
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="metanet-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        # PostgreSQL will not run as root: as root, run it as the postgres user the package created.
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self._run(
            [
                str(bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ]
        )
        self.process: subprocess.Popen | None = None

    def _run(self, command: list[str]) -> None:
        subprocess.run(command, user=self.user, check=True, capture_output=True, cwd=self.root)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> PostgresServer:
        command = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.root}",
            "-c",
            "max_connections=200",
        ]  # fsync and synchronous_commit stay on: real durability
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, user=self.user, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return self
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log()}") from None
                time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL every process of the server at once, as a crash would (committed data is in the WAL)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10  # backends exit with the postmaster; wait until none is left
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
