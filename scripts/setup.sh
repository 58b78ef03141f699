#!/usr/bin/env bash
# Create .venv and install the server, training code, test tools and client SDK into it.
# Idempotent: reinstalls only when pyproject.toml or clients/python/pyproject.toml changed.
# PyTorch is pinned (torch==2.14.1, torchvision==0.29.1) in pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.metanet-installed
wanted=$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$wanted" ]]; then
  echo "installing into .venv (first run takes a few minutes)..." >&2
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[dev]' -e './clients/python[images,progress]'
  echo "$wanted" > "$stamp"
fi
# The browser tests (tests/server/test_ui_browser.py) drive Debian's Chromium with Playwright, which
# must not download a browser of its own. Install it when missing and we may (root, apt-get).
if ! command -v chromium >/dev/null && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
  echo "installing chromium for the browser tests..." >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 ||
    { apt-get update >/dev/null && apt-get install -y --no-install-recommends chromium >/dev/null; } ||
    echo "could not install chromium: the browser tests will be skipped" >&2
fi
