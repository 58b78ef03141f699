"""Helpers for tests through a real server: processes on free ports, images, Omniglot drawings."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CHECKPOINT = REPO / "checkpoints/omniglot-standard.safetensors"
OMNIGLOT_ZIP = REPO.parent / "shared/data/omniglot/images_evaluation.zip"
STARTUP_SECONDS = 120


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """``python -m server`` in its own process group, so that a kill takes its workers down with it."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.with_name(data_dir.name + ".log")
        self.process: subprocess.Popen | None = None

    def start(self) -> ServerProcess:
        command = [sys.executable, "-m", "server", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        command += ["--checkpoint", str(CHECKPOINT), *self.args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self.healthy():
            if self.process.poll() is not None:
                pytest.fail(f"server exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"server not healthy after {STARTUP_SECONDS} s:\n{self.log()}")
            time.sleep(0.3)
        return self

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def kill(self) -> None:
        """SIGKILL the whole server: no shutdown code runs anywhere."""
        self._signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
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
    server = ServerProcess(data_dir, *args, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def png(pixels: np.ndarray | Image.Image, fmt: str = "PNG") -> str:
    """base64 of an encoded image file."""
    image = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def omniglot(alphabet: str | None, characters: int, drawers: int) -> list[list[bytes]]:
    """PNG files of evaluation characters (of one alphabet, or alphabet by alphabet): [character][drawer]."""
    by_character: dict[str, list[str]] = defaultdict(list)
    prefix = f"images_evaluation/{alphabet}/" if alphabet else "images_evaluation/"
    with zipfile.ZipFile(OMNIGLOT_ZIP) as archive:
        for name in archive.namelist():
            if name.startswith(prefix) and name.endswith(".png"):
                by_character[name.rsplit("/", 1)[0]].append(name)
        chosen = sorted(by_character)[:characters]
        return [[archive.read(name) for name in sorted(by_character[c])[:drawers]] for c in chosen]


def support_body(examples: list[tuple[str, bytes | str]]) -> dict:
    return {
        "examples": [
            {"label": label, "image": b64(im) if isinstance(im, bytes) else im} for label, im in examples
        ]
    }


def png_chunks(width: int, height: int, bit_depth: int, color_type: int, raw: bytes) -> bytes:
    """A PNG file from raw scanlines (each with its filter byte), with any header values."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def decompression_bomb(side: int = 8192) -> bytes:
    """A 1-bit PNG of side x side pixels (67 megapixels by default) that compresses to a few KB."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    raw = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return png_chunks(side, side, 1, 0, raw)


def zero_size_png() -> bytes:
    return png_chunks(0, 0, 8, 0, zlib.compress(b""))
