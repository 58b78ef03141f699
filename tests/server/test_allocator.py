"""server/allocator.py: with ``keep_freed_heap`` a process that allocates and frees the same blocks
over and over (as an inference worker does every batch) stops faulting them in again each time."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from testkit import REPO

# Rounds of four 12 MB blocks, written and freed: the page faults per round after three of warm-up.
CHURN = """
import resource, sys
import numpy as np
from server.allocator import keep_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap()
def batch():
    blocks = [np.ones(3_000_000, np.float32) for _ in range(4)]
    del blocks
for _ in range(3):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    batch()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def faults_per_round(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    return float(done.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the C library is not glibc")
def test_freed_blocks_are_reused_without_page_faults() -> None:
    # By default glibc hands the freed top of the heap back after each round (48 MB > its threshold).
    assert faults_per_round("default") > 1000
    assert faults_per_round("keep") < 100
