#!/usr/bin/env bash
# One GPU session's work in one call: benchmark the training engine, train both shipped
# checkpoints side by side (each replaced by the average of its run's last validation snapshots
# when that validates better: training/average.py), evaluate them (1,000 random tasks at 5- and
# 20-way and 400 within-alphabet 20-way trials, each recorded in the checkpoint's JSON; the
# standard one, which the server loads, also has its "none of these" threshold calibrated and
# tested), and pack everything into $OUT/results.tar.gz (packed once after training too, so a
# cut-off evaluation loses nothing).
#
#   MINUTES=5 bash scripts/train_gpu.sh                            # about 8 minutes on an H200
#   CONTINUE=1 RUN=finetune MINUTES=2.4 bash scripts/train_gpu.sh   # continue from checkpoints/
#   STANDARD_CHECKPOINT=checkpoints/omniglot-standard-3val.safetensors VALIDATION_ALPHABETS="Tifinagh \
#       Tagalog Ojibwe_(Canadian_Aboriginal_Syllabics)" MINUTES=5 bash scripts/train_gpu.sh
#       # standard split from scratch with only 3 alphabets held out (more classes to train on)
#   DEVICE=cpu MINUTES=0.1 TASKS=2 TRIALS=2 BENCH_STEPS=1 BENCH_BATCH=1 BENCH_SWEEP=2 VAL_TASKS=2 WAYS=5 \
#       COMPILE=none FLAGS="--way 5 --queries 2 --batch 2 --episodes 4" \
#       STANDARD_CHECKPOINT=runs/smoke/standard.safetensors VINYALS_CHECKPOINT=runs/smoke/vinyals.safetensors \
#       bash scripts/train_gpu.sh   # CPU smoke test (writes runs/smoke/, not checkpoints/)
#
# The training flags are the recipe files' (RECIPE, default configs/gpu-{split}.toml with {split}
# the split's name: configs/gpu-standard.toml and configs/gpu-vinyals.toml, the recipe of the shipped
# GPU checkpoints; docs/RESULTS.md, "Re-running the shipped checkpoints"). The script adds the run's
# own flags (--data, --max-minutes, --init-from, --out, --run-dir, --snapshots) and those of the knobs
# below that are set; a flag on the command line wins over the recipe.
#
# Knobs (environment): MINUTES, DEVICE, DATA, OUT, PY, TASKS, TRIALS, WAYS, BENCH_STEPS,
# BENCH_BATCH, BENCH_SWEEP, AVERAGE_LAST (how many validation snapshots of each run are averaged
# after training), COMPILE (all|d|none: the benchmark's, default all, and when set the training's,
# else the recipe's; training falls back to none if the compiled benchmark fails), VAL_TASKS,
# VAL_EVERY, RECIPE, FLAGS (more training flags, over the recipe's), CONTINUE, RUN (run-dir prefix),
# SELECT_STANDARD (what picks the standard checkpoint, the server's; default: the recipe's),
# VALIDATION_ALPHABETS (the standard split's held-out background alphabets, for validation and the
# open-set calibration; default: the checkpoint's own, else the eight of training/episodes.py; more
# of them make the calibrated false-rejection rate transfer better, at the cost of training classes),
# STANDARD_CHECKPOINT (the standard split's checkpoint: continued from with CONTINUE, written, evaluated
# and calibrated; default checkpoints/omniglot-standard-8val.safetensors, the server's),
# VINYALS_CHECKPOINT (likewise; default checkpoints/omniglot-vinyals.safetensors), TRAIN_GRACE_S
# (seconds past MINUTES before a training run is sent SIGTERM, its clean stop; default 90).
# Data: DATA is a folder with splits/vinyals/*.txt (default: training/data.py's, ../shared/data/omniglot);
# the decoded images must be in .cache/omniglot (made by `python -m training.data`), or DATA must
# also hold the Omniglot zips. On a device machine without ../shared, copy splits/ into
# .cache/omniglot-data, carry .cache and set DATA=.cache/omniglot-data.
set -uo pipefail
cd "$(dirname "$0")/.."
MINUTES=${MINUTES:-4.5}
DEVICE=${DEVICE:-cuda}
data=() && [[ -n ${DATA:-} ]] && data=(--data "$DATA")  # else the commands' own default
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
TASKS=${TASKS:-1000}
TRIALS=${TRIALS:-400}
BENCH_STEPS=${BENCH_STEPS:-8}
BENCH_COMPILE=${COMPILE:-all}
train_compile=() && [[ -n ${COMPILE:-} ]] && train_compile=(--compile "$COMPILE")
RECIPE=${RECIPE:-configs/gpu-\{split\}.toml}
read -ra flags <<< "${FLAGS:-}"
mkdir -p "$OUT" runs checkpoints
export PYTHONUNBUFFERED=1
log() { echo "[$(date +%T)] $*"; }

log "device"
if [[ $DEVICE == cuda ]]; then nvidia-smi --query-gpu=name,memory.total --format=csv | tee runs/gpu.txt; fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

log "1. benchmark: 20-way 1-shot, 10 queries per class (the issue's episode), T=5"
if ! timeout 110 $PY -m benchmarks.train_speed --device "$DEVICE" "${data[@]}" --way 20 --queries 10 \
    --task-examples 5 --batch "${BENCH_BATCH:-16}" \
    --steps "$BENCH_STEPS" --compile "$BENCH_COMPILE" --json runs/train_speed_"$DEVICE"_20way.json \
    --profile runs/profile_"$DEVICE"_20way.txt 2>&1 \
    | grep -v Warning | tee runs/bench.log; then
  # a benchmark cut off after its training figure still shows that the compiled step runs
  if grep -q "^training:" runs/bench.log; then
    log "benchmark cut off after its training figure: training compiled"
  else
    log "compiled benchmark failed: training without torch.compile"
    train_compile=(--compile none)
  fi
fi

log "1b. the same episodes, eager, with larger meta-batches (BENCH_SWEEP): where per-step overhead stops"
for batch in ${BENCH_SWEEP:-64 128}; do
  timeout 75 $PY -m benchmarks.train_speed --device "$DEVICE" "${data[@]}" --way 20 --queries 10 \
      --task-examples 5 --batch "$batch" --steps 3 --warmup 1 --compile none \
      --json runs/train_speed_"$DEVICE"_20way_batch"$batch".json 2>&1 | grep -v Warning | tee -a runs/bench.log
done

log "2. train both checkpoints for $MINUTES minutes, side by side"
checkpoint() { if [[ $1 == standard ]]; then echo "${STANDARD_CHECKPOINT:-checkpoints/omniglot-standard-8val.safetensors}"; else echo "${VINYALS_CHECKPOINT:-checkpoints/omniglot-vinyals.safetensors}"; fi; }
for split in vinyals standard; do
  # CONTINUE=1: start from the checkpoint in place (written again only when validation improves)
  init=() && [[ -n ${CONTINUE:-} ]] && init=(--init-from "$(checkpoint $split)")
  select=() && [[ $split == standard && -n ${SELECT_STANDARD:-} ]] && select=(--select "$SELECT_STANDARD")
  knobs=() && [[ -n ${VAL_EVERY:-} ]] && knobs+=(--val-every "$VAL_EVERY")
  [[ -n ${VAL_TASKS:-} ]] && knobs+=(--val-tasks "$VAL_TASKS")
  held_out=() && [[ $split == standard && -n ${VALIDATION_ALPHABETS:-} ]] \
    && read -ra held_out <<< "$VALIDATION_ALPHABETS" && held_out=(--validation-alphabets "${held_out[@]}")
  # a run past its --max-minutes (a slow compile, say) gets SIGTERM: it still validates and saves
  limit_s=$(awk -v m="$MINUTES" -v grace="${TRAIN_GRACE_S:-90}" 'BEGIN { printf "%d", m * 60 + grace }')
  timeout --kill-after=60 "$limit_s" $PY -m training.train --recipe "${RECIPE//\{split\}/$split}" "${data[@]}" \
      --device "$DEVICE" "${train_compile[@]}" "${knobs[@]}" "${select[@]}" "${flags[@]}" --max-minutes "$MINUTES" \
      "${init[@]}" "${held_out[@]}" --out "$(checkpoint $split)" --run-dir "runs/${RUN:-omniglot}-$split" \
      --snapshots > runs/train-$split.log 2>&1 &
done
wait
for split in vinyals standard; do tail -c 400 runs/train-$split.log; echo; cat runs/${RUN:-omniglot}-$split/metrics.csv; done

log "2b. the average of each run's last ${AVERAGE_LAST:-4} validation snapshots replaces its checkpoint if it validates better"
for split in vinyals standard; do
  timeout 120 $PY -m training.average --like "$(checkpoint $split)" --run-dir runs/${RUN:-omniglot}-$split \
      --last "${AVERAGE_LAST:-4}" "${data[@]}" --device "$DEVICE" --if-better --out "$(checkpoint $split)" \
      2>&1 | grep -v Warning | tee -a runs/average.log &
done
wait

pack() { tar czf "$OUT/results.tar.gz" --exclude='*.pt' checkpoints/omniglot-* runs; }
pack  # what is trained comes back even if the evaluation runs out of time

log "3. evaluate, one chain per checkpoint"
for split in vinyals standard; do
  (
    for way in ${WAYS:-5 20}; do
      timeout 90 $PY -m training.evaluate --checkpoint "$(checkpoint $split)" "${data[@]}" \
          --split $split --way $way --tasks "$TASKS" --seed 0 --device "$DEVICE" --json --record \
          > runs/eval-$split-$way.json
    done
    timeout 90 $PY -m training.evaluate --checkpoint "$(checkpoint $split)" "${data[@]}" \
        --split $split --way 20 --protocol within-alphabet --tasks "$TRIALS" --seed 0 --device "$DEVICE" \
        --json --record > runs/eval-$split-20-within.json
    if [[ $split == standard ]]; then  # the server's checkpoint: calibrate "none of these", then test it
      timeout 150 $PY -m training.open_set --checkpoint "$(checkpoint $split)" "${data[@]}" \
          --split $split --false-rejection 0.05 --ways ${WAYS:-5 20} --tasks "${VAL_TASKS:-100}" \
          --test-tasks "$TASKS" --device "$DEVICE" > runs/open-set-$split.json
    fi
  ) &
done
wait
cat runs/eval-*.json runs/open-set-*.json

log "4. pack"
pack
log "done"
