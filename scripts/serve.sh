#!/usr/bin/env bash
# Start the server on the embedded defaults (http://127.0.0.1:8000, task store in ./data,
# checkpoints/omniglot-standard-8val.safetensors). Extra arguments go to `python -m server`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m server --host 127.0.0.1 --port 8000 --data-dir data "$@"
