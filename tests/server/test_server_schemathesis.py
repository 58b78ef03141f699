"""schemathesis against a real server: generated requests, valid and invalid, get the answers the
OpenAPI schema promises (docs/API.md, "Checking the contract"; settings in schemathesis.toml)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testkit import REPO, ServerProcess


def schemathesis(server: ServerProcess, seconds: int) -> None:
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json"]
    command += ["--max-time", str(seconds), "--no-color"]  # the checks: schemathesis.toml
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=seconds + 120)
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "Configuration:    " + str(REPO / "schemathesis.toml") in done.stdout


def test_schemathesis_finds_nothing_in_20_seconds(server: ServerProcess) -> None:
    schemathesis(server, 20)


@pytest.mark.slow
def test_schemathesis_finds_nothing_in_240_seconds(server: ServerProcess) -> None:
    schemathesis(server, 240)
