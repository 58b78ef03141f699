#!/usr/bin/env bash
# The test table of a checkpoint, each result recorded in its JSON (`test`) and saved under
# docs/results/: 1,000 random tasks at 5- and 20-way, 200 at 100-way, 400 within-alphabet 20-way
# trials, and 5 tasks holding every test class at once (--way all; top-1 and top-5), seed 0.
#
#   bash scripts/evaluate.sh checkpoints/omniglot-standard-8val.safetensors standard
#   NAME=other bash scripts/evaluate.sh runs/x/best.safetensors standard   # saved as eval-other-*.json
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT=$1
SPLIT=$2
NAME=${NAME:-$(basename "$CHECKPOINT" .safetensors | sed "s/^omniglot-//")}
PY=${PY:-.venv/bin/python}
mkdir -p docs/results
run() {  # run NAME ARGS...: one evaluation, its JSON saved as docs/results/eval-$NAME-<name>.json
  local out=docs/results/eval-$NAME-$1.json
  shift
  $PY -m training.evaluate --checkpoint "$CHECKPOINT" --split "$SPLIT" --seed 0 --json --compile --record "$@" > "$out"
  echo "$out: $(cat "$out")"
}
run 5 --way 5 --tasks 1000
run 20 --way 20 --tasks 1000
run 20-within --way 20 --protocol within-alphabet --tasks 400
run 100 --way 100 --tasks 200
run all --way all --tasks 5
