#!/usr/bin/env bash
# One GPU session's serving checks in one call: the server benchmark with the server on the GPU
# (benchmarks/server_bench.py: HTTP latency and throughput beside the HTTP floor and the in-process
# compute floor), then the GPU tests (pytest -m gpu). Everything lands in $OUT.
#
#   bash scripts/serve_gpu.sh                                    # about 4 minutes on an H200
#   pip install --no-index --target /tmp/site .whl/*.whl && PATH=/tmp/site/bin:$PATH PYTHONPATH=/tmp/site \
#       bash scripts/serve_gpu.sh     # a device machine: the server's wheels (and py-spy) carried in .whl/
#   DEVICE=cpu CALLS=10 REQUESTS=2 CLIENTS=1 SINGLE_CLIENTS=1 API_SERVERS=1 bash scripts/serve_gpu.sh   # CPU smoke test
#
# Knobs (environment): DEVICE, OUT, PY, BACKENDS, WORKERS, API_SERVERS (HTTP processes: each decodes
# its requests' PNGs, so throughput on a many-core machine needs several), CALLS, REQUESTS, CLIENTS,
# SINGLE_CLIENTS, PROFILE_SECONDS (0: no profile). The drawings are read from METANET_TEST_OMNIGLOT (default ../shared/data/omniglot;
# on a device machine, copy images_evaluation.zip into .cache/omniglot-data and carry it).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-results}
PY=${PY:-python3}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
log() { echo "[$(date +%T)] $*"; }

log "device"
if [[ $DEVICE == cuda ]]; then nvidia-smi --query-gpu=name,memory.total --format=csv; fi
nproc

log "1. server benchmark, server on $DEVICE"
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" $PY benchmarks/server_bench.py --device "$DEVICE" --backends ${BACKENDS:-torch} \
    --workers "${WORKERS:-1}" --api-servers "${API_SERVERS:-8}" --calls "${CALLS:-200}" \
    --requests "${REQUESTS:-32}" --clients ${CLIENTS:-1 16 64} --single-clients ${SINGLE_CLIENTS:-1 16} \
    --out "$OUT/server_bench_$DEVICE.json" 2>&1 | grep -v 'it/s\]' | tee "$OUT/server_bench_$DEVICE.log"

log "2. where the server's processes spend their time under 256-image load (py-spy)"
if command -v py-spy > /dev/null && [[ ${PROFILE_SECONDS:-15} != 0 ]]; then
  timeout 150 $PY -m benchmarks.profile_server --device "$DEVICE" --api-servers "${API_SERVERS:-8}" \
      --workers "${WORKERS:-1}" --clients 16 --seconds "${PROFILE_SECONDS:-15}" --out "$OUT/profile" \
      > "$OUT/profile.log" 2>&1
  head -c 6000 "$OUT/profile/summary.txt"
fi

log "3. GPU tests"
if [[ $DEVICE == cuda ]]; then
  timeout "${TEST_TIMEOUT:-150}" $PY -m pytest -m gpu -p no:cacheprovider -q -rs \
      tests/server/test_server_backends.py tests/metanet/test_onnx.py 2>&1 | tee "$OUT/gpu_tests.log"
fi
log "done"
