#!/usr/bin/env bash
# Lint and run the default test suite (slow and GPU tests are deselected; add `-m slow` for them).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
