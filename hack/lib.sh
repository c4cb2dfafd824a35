# Shared helpers for the hack/ scripts; sourced, never run.
# shellcheck shell=bash
source "$(dirname "${BASH_SOURCE[0]}")/versions.sh"

# Image names. Everything local lives under localhost/ so nothing is ever pulled by mistake.
BASE_IMAGE_NAME=${WSLB_BASE_IMAGE:-localhost/wslb-base:bookworm}
PYTHON_BASE_IMAGE_NAME=${WSLB_PYTHON_BASE_IMAGE:-localhost/wslb-python:bookworm}
NODE_IMAGE_NAME=${WSLB_NODE_IMAGE_BUILD:-localhost/wslb-kind-node:${K8S_VERSION}}
WSLB_IMAGE=${WSLB_IMAGE:-localhost/wslb:dev}

log() { printf '>> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# timed LABEL CMD...: runs CMD and records how long it took, for the closing summary the
# issue asks for (what was built and how long each step took).
TIMINGS=()
timed() {
  local label=$1 start=$SECONDS; shift
  "$@"
  TIMINGS+=("$(printf '%-28s %4ds' "$label" $((SECONDS - start)))")
}
print_timings() {
  [ ${#TIMINGS[@]} -eq 0 ] || printf '   %s\n' "${TIMINGS[@]}" >&2
}

# image_exists NAME: true when podman has the image; WSLB_REBUILD=1 forces a rebuild.
image_exists() {
  [ "${WSLB_REBUILD:-}" != 1 ] && podman image exists "$1"
}
