#!/usr/bin/env bash
# Builds our image from the top-level Dockerfile with podman (or docker), tags it
# $WSLB_RELEASE_IMAGE (localhost/wslb:<chart appVersion>) and $WSLB_IMAGE (default
# localhost/wslb:dev), and checks the properties the chart and the e2e tier rely on.
#
# The Dockerfile is the one `docker build .` uses anywhere; this script only adds what this
# kind of machine needs:
# - a base image: where no registry is reachable (WSLB_IMAGE_BASE unset and no
#   WSLB_KIND_NODE_IMAGE), the local Debian + Python base (hack/base-image.sh), never pulled;
# - the host's pip settings as build secrets (hack/pip_settings.py): the CA bundle pip trusts
#   (this machine's package proxy intercepts TLS) and the index settings, mounted for the one
#   RUN that downloads; they never land in a layer (tests/e2e/test_image.py checks).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

# engine: podman (this machine); docker where only Docker is installed.
engine=${WSLB_CONTAINER_ENGINE:-}
if [ -z "$engine" ]; then
  if command -v podman >/dev/null; then engine=podman; else engine=docker; fi
fi

build_args=()
if [ -n "${WSLB_IMAGE_BASE:-}" ]; then
  build_args=(--build-arg "BASE_IMAGE=$WSLB_IMAGE_BASE")
elif [ -z "${WSLB_KIND_NODE_IMAGE:-}" ]; then
  timed "base images (built once)" bash hack/base-image.sh
  build_args=(--build-arg "BASE_IMAGE=$PYTHON_BASE_IMAGE_NAME")
  [ "$engine" != podman ] || build_args+=(--pull=never)
fi

# secrets: pip's CA bundle and index settings on this host, if any, as build secrets. The
# pip.conf is written to a private temporary folder, removed on exit.
secret_dir=$(mktemp -d)
chmod 700 "$secret_dir"
trap 'rm -rf "$secret_dir"' EXIT
secrets=()
if command -v python3 >/dev/null; then
  cacert=$(python3 hack/pip_settings.py cert)
  [ -z "$cacert" ] || secrets+=(--secret "id=cacert,src=$cacert")
  python3 hack/pip_settings.py pip-conf >"$secret_dir/pip.conf"
  [ ! -s "$secret_dir/pip.conf" ] || secrets+=(--secret "id=pipconf,src=$secret_dir/pip.conf")
fi

build() {
  local layers=() revision
  [ "$engine" != podman ] || layers=(--layers=false)   # podman: keep no stage images around
  revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
  "$engine" build -q "${layers[@]}" "${build_args[@]}" "${secrets[@]}" \
    --label wslb.e2e=image \
    --label "org.opencontainers.image.version=$WSLB_APP_VERSION" \
    --label "org.opencontainers.image.revision=$revision" \
    -t "$WSLB_RELEASE_IMAGE" -f Dockerfile . >/dev/null \
    || return 1  # explicit: under `timed` errexit is off, and a stale image would be tested
  if [ "$WSLB_IMAGE" != "$WSLB_RELEASE_IMAGE" ]; then
    "$engine" tag "$WSLB_RELEASE_IMAGE" "$WSLB_IMAGE" || return 1
  fi
  prune_ours "$engine"
}

# check: non-root fixed UID, no pip, runs with a read-only root fs, and PID 1 exits on SIGTERM
# fast (a stop that needs SIGKILL would take the full 10 s grace period).
check() {
  local uid cid start code size
  uid=$("$engine" run --rm --read-only "$WSLB_IMAGE" id -u)
  [ "$uid" = 10001 ] || die "image runs as uid $uid, expected 10001"
  ! "$engine" run --rm --read-only "$WSLB_IMAGE" python3 -m pip --version >/dev/null 2>&1 \
    || die "the image has pip: nothing in it may install packages"
  cid=$("$engine" run -d --read-only --network none "$WSLB_IMAGE" wslb-echo --host 127.0.0.1 --port 8080)
  # wait until the echo backend is up (poll with a deadline), then time its SIGTERM stop
  local deadline=$((SECONDS + 30))
  until "$engine" exec "$cid" python -c 'import socket; socket.create_connection(("127.0.0.1", 8080), 1)' 2>/dev/null; do
    [ $SECONDS -lt $deadline ] || { "$engine" logs "$cid" >&2; "$engine" rm -f "$cid" >/dev/null; die "echo backend did not start in the image"; }
    sleep 0.5
  done
  start=$SECONDS
  "$engine" stop -t 10 "$cid" >/dev/null
  code=$("$engine" inspect -f '{{.State.ExitCode}}' "$cid")
  "$engine" rm "$cid" >/dev/null
  [ $((SECONDS - start)) -lt 5 ] || die "PID 1 did not stop on SIGTERM (took $((SECONDS - start))s)"
  [ "$code" = 0 ] || log "note: echo backend exited $code on SIGTERM"
  size=$("$engine" image inspect -f '{{.Size}}' "$WSLB_IMAGE")
  log "$WSLB_RELEASE_IMAGE: $((size / 1048576)) MiB"
}

timed "our image ($WSLB_RELEASE_IMAGE)" build || { print_timings; die "the image build failed"; }
timed "image checks" check
print_timings
