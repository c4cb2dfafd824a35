#!/usr/bin/env bash
# Builds the local base image (Debian bookworm, debootstrap minbase, podman import), the root
# of every image the e2e tier builds here, and the Python base (base + python3-venv) that our
# image is built on when no registry is reachable. Skips what already exists.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

MIRROR=${WSLB_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# build_base: debootstrap into a temporary folder, trim caches, import as an image.
build_base() {
  local dir
  dir=$(mktemp -d /var/tmp/wslb-base.XXXXXX)
  log "debootstrap --variant=minbase bookworm ($MIRROR)"
  debootstrap --variant=minbase bookworm "$dir/rootfs" "$MIRROR" >"$dir/debootstrap.log" 2>&1 \
    || { tail -30 "$dir/debootstrap.log" >&2; die "debootstrap failed"; }
  rm -rf "$dir"/rootfs/var/cache/apt/archives/*.deb "$dir"/rootfs/var/lib/apt/lists/*
  tar --numeric-owner -C "$dir/rootfs" -c . \
    | podman import -q --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
      --change 'LABEL wslb.e2e=base' - "$BASE_IMAGE_NAME" >/dev/null
  rm -rf "$dir"
}

# build_python_base: Debian's Python 3.11 (as on this machine) with venv, no compilers.
build_python_base() {
  podman build -q --pull=never --layers=false --label wslb.e2e=python-base \
    --build-arg "BASE_IMAGE=$BASE_IMAGE_NAME" \
    -t "$PYTHON_BASE_IMAGE_NAME" -f images/python/Containerfile images/python >/dev/null
}

image_exists "$BASE_IMAGE_NAME" || timed "base image (debootstrap)" build_base
image_exists "$PYTHON_BASE_IMAGE_NAME" || timed "python base image" build_python_base
prune_ours
print_timings
