"""The server image: built from the Dockerfile and run with Buildah by scripts/image.sh (root on Debian)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKS = [
    "image size",
    "without its API keys file the server exits 2",
    "/health answers",
    "runs as uid 10001",
    "/app is read-only",
    "README client example prints",
    "after the restart, task readme still holds",
    "no /run/secrets/pip-ca and no PIP_CERT in the image",
]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("apt-get") is None, reason="Buildah runs as root on Debian here"
    ),
]


def test_the_image_builds_and_serves_as_documented() -> None:
    for command in ("build", "test"):
        done = subprocess.run(["bash", "scripts/image.sh", command], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, f"image.sh {command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    passed = [line for line in done.stdout.splitlines() if line.startswith("PASS: ")]
    for check in CHECKS:
        assert any(check in line for line in passed), f"no passing check {check!r} in:\n{done.stdout}"
