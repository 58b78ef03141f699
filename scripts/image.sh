#!/usr/bin/env bash
# Build the server image from the Dockerfile and test the running container, with Buildah alone: no
# daemon, no registry, no root namespaces (chroot isolation, vfs storage). Run as root on Debian.
#
#   bash scripts/image.sh build   # base image (pulled, else made by mmdebstrap), then the image
#   bash scripts/image.sh test    # run the image and check it over HTTP; prints every check
#   bash scripts/image.sh clean   # remove the image, its base and the test containers
#
# Knobs (environment):
#   BASE=debian:bookworm-slim         the Dockerfile's BASE (a CUDA image for the GPU variant)
#   IMAGE=metanet-server:cpu          the image's name
#   PIP_CA=/path/ca.crt               CA bundle for pip inside the build, passed as a build secret
#                                     (default: the one pip is configured with here, if any)
#   OMNIGLOT=../shared/data/omniglot  folder of images_evaluation.zip, for the README's client example
# Commands and figures: docs/CLIENT.md, "Deploy in a container".
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-debian:bookworm-slim}
IMAGE=${IMAGE:-metanet-server:cpu}
OMNIGLOT=${OMNIGLOT:-../shared/data/omniglot}
BUILDAH=(buildah --storage-driver vfs)
TEST_CONTAINER=metanet-image-test

log() { printf '== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
pass() { printf 'PASS: %s\n' "$*"; }

needs() {
  local missing=()
  command -v buildah >/dev/null || missing+=(buildah)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  command -v ss >/dev/null || missing+=(iproute2)
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || fail "needs ${missing[*]} (apt-get install ${missing[*]}) and root"
    log "installing ${missing[*]} from Debian"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The base: from the local store, else pulled, else (no registry reachable) a Debian bookworm minbase
# made by mmdebstrap from Debian's packages and stored under the name the build asks for.
base() {
  if "${BUILDAH[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    log "base $BASE: in the local store"
  elif timeout 120 "${BUILDAH[@]}" pull --retry 0 "$BASE" >/dev/null 2>&1; then
    log "base $BASE: pulled"
  elif [[ $BASE == debian:bookworm* ]]; then
    log "base $BASE: cannot be pulled; making it with mmdebstrap"
    local rootfs ctr start=$SECONDS
    rootfs=$(mktemp --suffix=.tar)
    mmdebstrap --quiet --variant=minbase --skip=output/dev bookworm "$rootfs" \
      "deb http://deb.debian.org/debian bookworm main" \
      "deb http://deb.debian.org/debian bookworm-updates main" \
      "deb http://deb.debian.org/debian-security bookworm-security main"
    ctr=$("${BUILDAH[@]}" from scratch)
    "${BUILDAH[@]}" add "$ctr" "$rootfs" / >/dev/null
    "${BUILDAH[@]}" config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --label org.opencontainers.image.description="Debian bookworm minbase made by mmdebstrap" "$ctr"
    "${BUILDAH[@]}" commit --rm --quiet "$ctr" "docker.io/library/$BASE" >/dev/null
    rm -f "$rootfs"
    log "base $BASE made in $((SECONDS - start)) s"
  else
    fail "base $BASE cannot be pulled (only debian:bookworm* can be made here)"
  fi
}

build() {
  needs
  base
  local secret=() ca=${PIP_CA:-${PIP_CERT:-$(pip3 config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | head -1)}}
  if [[ -n $ca ]]; then
    [[ -f $ca ]] || fail "PIP_CA=$ca is not a file"
    log "pip in the build trusts $ca (build secret pip-ca)"
    secret=(--secret "id=pip-ca,src=$ca")
  fi
  log "building $IMAGE from the Dockerfile on $BASE"
  local start=$SECONDS
  "${BUILDAH[@]}" bud --isolation chroot --format docker --pull=false "${secret[@]}" \
    --build-arg BASE="$BASE" -t "$IMAGE" .
  log "built $IMAGE in $((SECONDS - start)) s"
}

# --- test -------------------------------------------------------------------------------------

work=""
server_pid=""

stop_server() {
  [[ -n $server_pid ]] || return 0
  kill -TERM -- "-$server_pid" 2>/dev/null || true  # the process group of `buildah run` and the server
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

cleanup() {
  stop_server
  "${BUILDAH[@]}" rm "$TEST_CONTAINER" >/dev/null 2>&1 || true
  [[ -z $work ]] || rm -rf "$work"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Start the image's entrypoint (as the image's user, in its working directory) with extra arguments.
start_server() {
  setsid "${BUILDAH[@]}" run --isolation chroot "$@" "$TEST_CONTAINER" -- "${entrypoint[@]}" --port "$port" \
    >>"$work/server.log" 2>&1 &
  server_pid=$!
}

wait_healthy() {
  local start=$SECONDS
  until curl -sf "$url/health" >/dev/null 2>&1; do
    kill -0 "$server_pid" 2>/dev/null || { tail -20 "$work/server.log" >&2; fail "the server exited before /health answered"; }
    ((SECONDS - start < 600)) || fail "/health did not answer within 600 s"
    sleep 1
  done
  pass "/health answers $(curl -s "$url/health") after $((SECONDS - start)) s (time to healthy, $1)"
}

test_image() {
  needs
  "${BUILDAH[@]}" inspect --type image "$IMAGE" >/dev/null 2>&1 || fail "no image $IMAGE: run 'bash scripts/image.sh build'"
  [[ -f $OMNIGLOT/images_evaluation.zip ]] || fail "no $OMNIGLOT/images_evaluation.zip (set OMNIGLOT)"
  work=$(mktemp -d)
  trap cleanup EXIT

  log "image $IMAGE: $("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -1)"
  pass "image size $("${BUILDAH[@]}" images --format '{{.Size}}' "$IMAGE" | head -1) (buildah images)"

  # The SDK, which needs no torch, in a virtualenv of its own.
  local sdk=.cache/image-test-sdk
  if [[ ! -x $sdk/bin/python ]] || ! "$sdk/bin/python" -c 'import metanet_client' 2>/dev/null; then
    python3 -m venv "$sdk" && "$sdk/bin/python" -m pip install ./clients/python >"$work/sdk.log" 2>&1 \
      || { cat "$work/sdk.log" >&2; fail "could not install the SDK from clients/python"; }
  fi

  "${BUILDAH[@]}" rm "$TEST_CONTAINER" >/dev/null 2>&1 || true
  local start=$SECONDS
  "${BUILDAH[@]}" from --pull=false --name "$TEST_CONTAINER" "$IMAGE" >/dev/null
  log "container $TEST_CONTAINER made in $((SECONDS - start)) s (vfs storage copies the whole image)"
  local config user
  config=$("${BUILDAH[@]}" inspect --type image "$IMAGE")
  mapfile -t entrypoint < <(python3 -c 'import json, sys; print("\n".join(json.load(sys.stdin)["Docker"]["config"]["Entrypoint"]))' <<<"$config")
  user=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["Docker"]["config"]["User"])' <<<"$config")
  ((${#entrypoint[@]})) || fail "$IMAGE has no entrypoint"

  # What `docker run -v metanet-data:/data -v ./api-keys:/run/secrets/metanet-api-keys:ro` provides.
  mkdir "$work/data"
  chown 10001 "$work/data"
  local key
  key=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  printf 'image-test:%s\n' "$key" >"$work/api-keys"
  chmod 644 "$work/api-keys"
  local volumes=(-v "$work/data:/data" -v "$work/api-keys:/run/secrets/metanet-api-keys:ro")
  port=$(free_port)
  url=http://127.0.0.1:$port

  # Without its API keys file the server refuses to start, and says why. First, while the container
  # is fresh: a bind mount leaves its mount point behind in the container's files, as an empty file.
  local out rc=0
  out=$(timeout 300 "${BUILDAH[@]}" run --isolation chroot -v "$work/data:/data" "$TEST_CONTAINER" -- \
    "${entrypoint[@]}" --port "$port" 2>&1) || rc=$?
  [[ $rc != 0 && $out == *"cannot read the API keys file /run/secrets/metanet-api-keys"* ]] \
    || fail "without its keys file the server did not refuse to start (exit $rc): $out"
  pass "without its API keys file the server exits $rc: $(grep -o 'error: .*' <<<"$out")"

  log "running ${entrypoint[*]} --port $port (chroot isolation: the container shares this machine's loopback)"
  start_server "${volumes[@]}"
  wait_healthy "first start"

  # The server's own process (the one listening on the port) runs as the image's user.
  local pid uid
  pid=$(ss -ltnpH "sport = :$port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)
  uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")
  [[ $uid == 10001 && $user == metanet ]] || fail "the server runs as uid $uid (image user '$user'), not metanet (10001)"
  pass "the server process ($pid) runs as uid $uid, the image's user $user"
  if "${BUILDAH[@]}" run --isolation chroot "$TEST_CONTAINER" -- \
      python -c 'open("/app/server/probe", "w")' 2>/dev/null; then
    fail "the image's user can write into /app"
  fi
  pass "/app is read-only for $user (creating a file in it fails)"

  # The README's client example, pointed at the container, prints what the README says it prints.
  local example expected printed
  example=$(python3 - "$url" "$OMNIGLOT" <<'EOF'
import re, sys
readme = open("README.md").read()
section = readme.split("## The client in five lines", 1)[1]
code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
code = code.replace("http://127.0.0.1:8000", sys.argv[1]).replace("../shared/data/omniglot", sys.argv[2])
print(code)
EOF
)
  expected=$(python3 -c 'import re; s = open("README.md").read().split("## The client in five lines", 1)[1]; print(re.search(r"It prints `([^`]*)`", s).group(1))')
  printed=$(METANET_API_KEY=$key "$sdk/bin/python" -c "$example")
  [[ $printed == "$expected" ]] || fail "README example printed $printed, the README says $expected"
  pass "README client example prints $printed, as documented"

  # Restart on the same volume: the examples taught before are still there.
  stop_server
  log "restarting the container on the same /data volume"
  start_server "${volumes[@]}"
  wait_healthy "restart"
  local labels
  labels=$(METANET_API_KEY=$key METANET_URL=$url "$sdk/bin/python" -c \
    'from metanet_client import Client; print(Client().task("readme").info().labels)' 2>&1) || true
  # The example without its add_examples line: classify only, with what the volume kept.
  printed=$(METANET_API_KEY=$key "$sdk/bin/python" -c "$(grep -v add_examples <<<"$example")" 2>&1 | tail -1) || true
  [[ $printed == "$expected" ]] || fail "after the restart: labels $labels, classify printed $printed"
  pass "after the restart, task readme still holds $labels and, teaching nothing, classifies as before: $printed"
  stop_server

  # The CA bundle given to pip during the build is nowhere in the image.
  if "${BUILDAH[@]}" run --isolation chroot "$TEST_CONTAINER" -- sh -c \
      'test -e /run/secrets/pip-ca || env | grep -q "^PIP_CERT="'; then
    fail "the build's CA bundle (or PIP_CERT) is in the image"
  fi
  pass "no /run/secrets/pip-ca and no PIP_CERT in the image"

  # What the CUDA libraries PyPI's torch brings weigh here (they are in the CPU image too).
  log "in the image: $("${BUILDAH[@]}" run --isolation chroot "$TEST_CONTAINER" -- sh -c \
    'cd /opt/venv/lib/python3*/site-packages && du -sch nvidia torch triton cuda* 2>/dev/null | tail -1') of torch and its CUDA libraries"
}

case ${1:-} in
  build) build ;;
  test) test_image ;;
  clean)
    "${BUILDAH[@]}" rm "$TEST_CONTAINER" >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi "$IMAGE" "docker.io/library/$BASE" 2>/dev/null || true
    ;;
  *) echo "usage: bash scripts/image.sh build|test|clean" >&2; exit 2 ;;
esac
