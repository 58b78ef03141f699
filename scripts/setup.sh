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
