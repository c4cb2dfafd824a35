#!/usr/bin/env bash
# Install a test peer's pinned npm packages (`npm ci` from its package-lock.json) into
# ${XDG_CACHE_HOME:-~/.cache}/wslb/npm/<peer>-<lock digest>/ and print that directory.
# Keyed by the lock's digest: a changed lock installs anew, an unchanged one costs nothing.
# Used by the tests' fixtures and by hack/ci-packages.sh (warm before the tiers run), so both
# install the same thing the same way. Install scripts are not run: the peers need none.
# Usage: tests/apps/npm-install.sh tests/apps/socketio
set -euo pipefail
peer=$(cd "${1:?usage: npm-install.sh <peer directory with package-lock.json>}" && pwd)
for tool in node npm; do
  command -v "$tool" >/dev/null || {
    echo "npm-install.sh: $tool not found: install Debian's nodejs and npm (hack/ci-packages.sh does)" >&2
    exit 1
  }
done
digest=$(cat "$peer/package.json" "$peer/package-lock.json" | sha256sum | cut -c1-16)
target="${XDG_CACHE_HOME:-$HOME/.cache}/wslb/npm/$(basename "$peer")-$digest"
if [ ! -e "$target/.installed" ]; then
  mkdir -p "$(dirname "$target")"
  work=$(mktemp -d "$target.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  cp "$peer/package.json" "$peer/package-lock.json" "$work/"
  (cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
  touch "$work/.installed"
  rm -rf "$target"
  mv "$work" "$target"  # whole or not at all: a broken install is never taken as done
  trap - EXIT
fi
echo "$target"
