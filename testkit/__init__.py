"""Helpers shared by the tests (tests/, clients/python/tests) and the benchmarks: a real server process
on a free port, Omniglot drawings, image files (good and malicious), threads whose failures fail the
caller, and the latency summary the benchmarks report. Installed with the project
(``pip install -e .``), so every one of them imports it."""

from testkit.images import b64, decompression_bomb, png, png_chunks, support_body, zero_size_png
from testkit.latency import latency_ms
from testkit.omniglot import OMNIGLOT_DIR, omniglot
from testkit.server import (
    CHECKPOINT,
    REPO,
    ServerProcess,
    ServerStartError,
    assert_acknowledged_kept,
    free_port,
    running_server,
)
from testkit.threads import in_threads, run_concurrently

__all__ = [
    "CHECKPOINT",
    "OMNIGLOT_DIR",
    "REPO",
    "ServerProcess",
    "ServerStartError",
    "assert_acknowledged_kept",
    "b64",
    "decompression_bomb",
    "free_port",
    "in_threads",
    "latency_ms",
    "omniglot",
    "png",
    "png_chunks",
    "run_concurrently",
    "running_server",
    "support_body",
    "zero_size_png",
]
