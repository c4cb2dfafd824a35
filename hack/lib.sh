# Shared helpers for the hack/ scripts; sourced, never run.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

# Image names. Everything local lives under localhost/ so nothing is ever pulled by mistake.
BASE_IMAGE_NAME=${WSLB_BASE_IMAGE:-localhost/wslb-base:bookworm}
PYTHON_BASE_IMAGE_NAME=${WSLB_PYTHON_BASE_IMAGE:-localhost/wslb-python:bookworm}
NODE_IMAGE_NAME=${WSLB_NODE_IMAGE_BUILD:-localhost/wslb-kind-node:${K8S_VERSION}}
# Our image. `make image` tags it with the chart's appVersion, the tag of the chart's default
# image (so `helm install` works on a cluster it was loaded into), and with WSLB_IMAGE (default
# :dev, the name the e2e tier loads) when that differs.
WSLB_APP_VERSION=$(sed -n 's/^appVersion: *["'\'']*\([^"'\'' ]*\).*/\1/p' \
  "$(dirname "${BASH_SOURCE[0]}")/../helm/wslb/Chart.yaml")
WSLB_RELEASE_IMAGE=${WSLB_RELEASE_IMAGE:-localhost/wslb:${WSLB_APP_VERSION:?appVersion not found in helm/wslb/Chart.yaml}}
WSLB_IMAGE=${WSLB_IMAGE:-localhost/wslb:dev}

# apt_get ARGS...: apt-get that waits (up to 10 minutes) for another apt or dpkg to finish
# instead of failing at once: two scripts preparing the same machine may overlap.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# timed LABEL CMD...: runs CMD and records how long it took, for the closing summary the
# issue asks for (what was built and how long each step took).
TIMINGS=()
timed() {
  local label=$1 start=$SECONDS status=0; shift
  "$@" || status=$?
  TIMINGS+=("$(printf '%-28s %4ds' "$label" $((SECONDS - start)))")
  return "$status"  # the caller must see a failure (e2e.sh reports pytest's exit code)
}
print_timings() {
  [ ${#TIMINGS[@]} -eq 0 ] || printf '   %s\n' "${TIMINGS[@]}" >&2
}

# prune_ours [ENGINE]: removes the untagged images our builds left behind (the previous
# build of a re-tagged image). Every image the hack/ scripts build carries the label wslb.e2e,
# and builds run with --layers=false, so nothing else is touched and no build cache piles up.
prune_ours() {
  "${1:-podman}" image prune -f --filter label=wslb.e2e >/dev/null 2>&1 || true
}

# image_exists NAME: true when podman has the image; WSLB_REBUILD=1 forces a rebuild.
image_exists() {
  [ "${WSLB_REBUILD:-}" != 1 ] && podman image exists "$1"
}
