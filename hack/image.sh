#!/usr/bin/env bash
# Builds our image (the top-level Dockerfile) with podman (or docker), tagged $WSLB_IMAGE
# (default localhost/wslb:dev), and checks the properties the e2e tier relies on.
#
# The Python dependencies are built as wheels on the host (pip wheel, using whatever index and
# certificate the host has) and installed in the image with --no-index: pip inside a build
# container would not trust this machine's package-proxy certificate, and neither that
# certificate nor any index address may enter the image.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

# engine: podman (this machine); docker where only Docker is installed.
engine=${WSLB_CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; else engine=docker; fi
fi

# BASE: where no registry is reachable (WSLB_IMAGE_BASE unset and no WSLB_KIND_NODE_IMAGE),
# the local Debian base with python3-venv, never pulled; otherwise the Dockerfile's official
# default (or WSLB_IMAGE_BASE), pulled when missing.
build_args=()
if [ -n "${WSLB_IMAGE_BASE:-}" ]; then
  build_args=(--build-arg "BASE_IMAGE=$WSLB_IMAGE_BASE")
elif [ -z "${WSLB_KIND_NODE_IMAGE:-}" ]; then
  bash hack/base-image.sh
  build_args=(--build-arg "BASE_IMAGE=$PYTHON_BASE_IMAGE_NAME")
  [ "$engine" != podman ] || build_args+=(--pull=never)
fi

# wheels: the project and all of its runtime dependencies, for the image's CPython 3.11.
wheels() {
  # setuptools builds in-tree under build/lib and would package files left there by an
  # earlier build even after they were deleted from the source: start clean
  rm -rf build/wheels build/lib build/bdist.*
  mkdir -p build/wheels
  python3 -m pip wheel -q --wheel-dir build/wheels . 2>&1 | grep -v 'DEPRECATION' >&2 || true
  ls build/wheels/wslb-*.whl >/dev/null 2>&1 || die "pip wheel did not produce the wslb wheel"
}

build() {
  local layers=()
  [ "$engine" != podman ] || layers=(--layers=false)   # podman: keep no stage images around
  "$engine" build -q "${layers[@]}" --label wslb.e2e=image "${build_args[@]}" \
    -t "$WSLB_IMAGE" -f Dockerfile . >/dev/null
  prune_ours "$engine"
}

# check: non-root fixed UID, runs with a read-only root fs, and PID 1 exits on SIGTERM fast
# (a stop that needs SIGKILL would take the full 10 s grace period).
check() {
  local uid cid start
  uid=$("$engine" run --rm --read-only "$WSLB_IMAGE" id -u)
  [ "$uid" = 10001 ] || die "image runs as uid $uid, expected 10001"
  cid=$("$engine" run -d --read-only --network none "$WSLB_IMAGE" wslb-echo --host 127.0.0.1 --port 8080)
  # wait until the echo backend is up (poll with a deadline), then time its SIGTERM stop
  local deadline=$((SECONDS + 30))
  until "$engine" exec "$cid" python -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 1)' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { "$engine" logs "$cid" >&2; "$engine" rm -f "$cid" >/dev/null; die "echo backend did not start in the image"; }
    sleep 0.5
  done
  start=$SECONDS
  "$engine" stop -t 10 "$cid" >/dev/null
  local code
  code=$("$engine" inspect -f '{{.State.ExitCode}}' "$cid")
  "$engine" rm "$cid" >/dev/null
  [ $((SECONDS - start)) -lt 5 ] || die "PID 1 did not stop on SIGTERM (took $((SECONDS - start))s)"
  [ "$code" = 0 ] || log "note: echo backend exited $code on SIGTERM"
}

timed "python wheels" wheels
timed "our image ($WSLB_IMAGE)" build
timed "image checks" check
print_timings
