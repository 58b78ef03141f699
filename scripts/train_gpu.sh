#!/usr/bin/env bash
# Train both shipped checkpoints on one GPU in parallel, evaluate them over 1,000 test tasks at
# 5/10/15/20-way 1-shot, and pack everything into $OUT/results.tar.gz (or ./gpu-results).
# Usage: MINUTES=6.5 bash scripts/train_gpu.sh   (needs .cache/omniglot, made by `python -m training.data`)
set -uo pipefail
MINUTES=${MINUTES:-6.5}
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT" runs checkpoints
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee runs/gpu.txt

# 1. smoke test: a few episodes of each configuration must run on this device
$PY -m training.train --split vinyals --way 20 --episodes 4 --val-every 2 --val-tasks 4 \
    --out runs/smoke.safetensors --run-dir runs/smoke 2>&1 | tail -3 || exit 1

# 2. train both models side by side
for split in vinyals standard; do
  $PY -m training.train --split $split --way 20 --queries 10 --episodes 1000000 --max-minutes "$MINUTES" \
      --val-every 500 --val-tasks 200 --val-way 20 \
      --out checkpoints/omniglot-$split.safetensors --run-dir runs/omniglot-$split \
      > runs/train-$split.log 2>&1 &
done
wait
tail -c 600 runs/train-*.log

# 3. evaluate: 1,000 test tasks for each way, all in parallel
for split in vinyals standard; do
  for way in 5 10 15 20; do
    timeout 170 $PY -m training.evaluate --checkpoint checkpoints/omniglot-$split.safetensors \
        --split $split --way $way --shot 1 --tasks 1000 --seed 0 --json > runs/eval-$split-$way.json &
  done
done
wait
cat runs/eval-*.json
tar czf "$OUT/results.tar.gz" --exclude='*.pt' checkpoints runs
