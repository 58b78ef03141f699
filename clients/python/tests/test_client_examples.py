"""The quickstart of docs/CLIENT.md and the example scripts, run as a user would; a fresh install."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from testkit import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO / "clients/python/src")}


def run_python(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_docs_quickstart(server_url: str) -> None:
    """The first Python block of docs/CLIENT.md runs verbatim from the repository root (on our port)."""
    doc = (REPO / "docs/CLIENT.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", doc, re.DOTALL).group(1)
    assert "http://127.0.0.1:8000" in snippet
    out = run_python("-c", snippet.replace("http://127.0.0.1:8000", server_url))
    labels_line, scores_line = out.splitlines()
    labels, scores = ast.literal_eval(labels_line), ast.literal_eval(scores_line)
    # It prints what the page says it prints (the text block under the snippet), novelty to rounding.
    documented = re.search(r"```text\n(.*?)\n(.*?)\n```", doc, re.DOTALL)
    assert labels == ast.literal_eval(documented.group(1))
    expected = ast.literal_eval(documented.group(2))
    assert [known for known, _ in scores] == [known for known, _ in expected]
    assert all(abs(a - b) <= 0.02 for (_, a), (_, b) in zip(scores, expected, strict=True))
    assert labels[-1] is None  # char6 was never taught: "none of these"
    assert snippet in (REPO / "clients/examples/quickstart.py").read_text()


def test_omniglot_example(server_url: str) -> None:
    out = run_python(
        "clients/examples/omniglot_one_shot.py", "--url", server_url, "--way", "5", "--trials", "2"
    )
    assert re.search(r"5-way 1-shot accuracy, 2 trials: \d+\.\d+% ± \d+\.\d+% \(95% CI\)", out), out


def test_mnist_example(server_url: str) -> None:
    out = run_python("clients/examples/mnist_digits.py", "--url", server_url, "--queries", "30")
    assert re.search(r"10-way 1-shot accuracy on 30 MNIST digits: \d+\.\d%", out), out


@pytest.mark.slow
def test_fresh_install_pulls_no_torch(tmp_path: Path) -> None:
    """`pip install ./clients/python` in a fresh virtual environment: httpx and pydantic, no torch."""
    venv.create(tmp_path / "venv", with_pip=True)
    python = tmp_path / "venv/bin/python"
    subprocess.run(
        [python, "-m", "pip", "install", "-q", str(REPO / "clients/python")], check=True, timeout=600
    )
    freeze = subprocess.run(
        [python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    assert "torch" not in freeze.lower() and "httpx" in freeze and "pydantic" in freeze
    help_text = subprocess.run(
        [tmp_path / "venv/bin/metanet-client", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "classify" in help_text
