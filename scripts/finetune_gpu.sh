#!/usr/bin/env bash
# Continue training both shipped checkpoints on one GPU (scripts/train_gpu.sh made them) with
# their silent fast-weight heads revived, keep a checkpoint only where validation improves, and
# evaluate over 1,000 test tasks. Usage: MINUTES=1.6 bash scripts/finetune_gpu.sh
set -uo pipefail
MINUTES=${MINUTES:-1.6}
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT" runs
export PYTHONUNBUFFERED=1
for split in vinyals standard; do
  cp checkpoints/omniglot-$split.safetensors runs/start-$split.safetensors
  cp checkpoints/omniglot-$split.json runs/start-$split.json
  $PY -m training.train --split $split --way 20 --queries 10 --episodes 1000000 --max-minutes "$MINUTES" \
      --val-every 250 --val-tasks 100 --val-way 20 --init-from runs/start-$split.safetensors \
      --out checkpoints/omniglot-$split.safetensors --run-dir runs/finetune-$split \
      > runs/finetune-$split.log 2>&1 &
done
wait
tail -c 300 runs/finetune-*.log
for job in vinyals:5 vinyals:20 standard:20 standard:5; do
  split=${job%%:*}; way=${job##*:}
  timeout 100 $PY -m training.evaluate --checkpoint checkpoints/omniglot-$split.safetensors \
      --split $split --way $way --shot 1 --tasks 1000 --seed 0 --json > runs/eval-$split-$way.json &
done
wait
cat runs/eval-*.json
tar czf "$OUT/results.tar.gz" --exclude='*.pt' checkpoints runs
