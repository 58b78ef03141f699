#!/usr/bin/env bash
# Short ablation of the recipe's model-side choices: the same budget of wall time per variant,
# the same seed, validation on the same held-out tasks. Writes runs/ablation-<name>/metrics.csv
# and prints the last validation of each variant.
#
#   MINUTES=3 bash scripts/ablate.sh                  # this machine's CPU: 5-way episodes
#   NAMES="relative relative-noaux" MINUTES=3 bash scripts/ablate.sh   # a subset of the variants
#   DEVICE=cuda WAY=20 BATCH=16 MINUTES=2 bash scripts/ablate.sh
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-3}
DEVICE=${DEVICE:-cpu}
WAY=${WAY:-5}
BATCH=${BATCH:-1}
PY=${PY:-.venv/bin/python}
mkdir -p runs
COMMON="--split vinyals --way $WAY --queries 5 --batch $BATCH --task-examples 5 --episodes 100000000 \
--max-minutes $MINUTES --val-every 200 --val-tasks 100 --val-way $WAY --device $DEVICE"
declare -A VARIANTS=(
  [paper]=""
  [signed-keys]="--signed-keys"
  [attention-loss]="--attention-loss 0.5"
  [signed-keys+attention-loss]="--signed-keys --attention-loss 0.5"
  [relative]="--signed-keys --attention-loss 0.5 --relative-fast-weights"
  [relative-noaux]="--signed-keys --relative-fast-weights"
)
NAMES=${NAMES:-paper signed-keys attention-loss signed-keys+attention-loss}
for name in $NAMES; do
  # shellcheck disable=SC2086
  $PY -m training.train $COMMON ${VARIANTS[$name]} --out runs/ablation-$name/best.safetensors \
      --run-dir runs/ablation-$name > runs/ablation-$name.log 2>&1 || echo "$name failed"
done
printf "%-28s %s\n" variant "last metrics row (episode, s, lr, loss, train, train-attention, val, ci, val-attention)"
for name in $NAMES; do
  printf "%-28s %s\n" "$name" "$(tail -1 runs/ablation-$name/metrics.csv)"
done
