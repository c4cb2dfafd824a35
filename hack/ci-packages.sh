#!/usr/bin/env bash
# Run by .ci/run before `make venv` / `make test` (when executable): everything a fresh machine
# lacks that the tiers need outside Python — the Debian packages and host settings of the e2e
# tier (hack/host-prep.sh), and the pinned Go tools in ~/.cache/wslb (hack/e2e-assets.sh),
# which the integration tier also uses (a real kube-apiserver, etcd, kubectl and helm). Built
# before the tiers run, so that on a fresh machine those tests run instead of skipping.
# And Debian's chromium and prometheus: the real browser and the real Prometheus of the
# integration tier (tests/integration/test_browser.py, test_prometheus.py skip without them);
# gcc for `make test-compiled` (the connection core compiled by mypyc).
# And the Socket.IO peer's pinned npm packages (tests/apps/socketio, `npm ci` into
# ~/.cache/wslb/npm by tests/apps/npm-install.sh), with Debian's nodejs and npm where the
# machine has no node: test_socketio.py fails, not skips, without them.
# Every step only does what is missing: on a warm machine this takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

# test_packages: chromium and prometheus, without their recommends (those bring avahi, cups
# helpers, upower and prometheus-node-exporter, none of which a headless test needs). Debian
# starts a package's service on install where an init system runs (prometheus on :9090,
# node-exporter on :9100): a policy-rc.d answering 101 forbids that for this install; one
# already there (this image's answers 101 too) is left as it is, ours is removed afterwards.
# Runs under `timed`, so errexit is off in here: failures are returned explicitly.
test_packages() {
  # openssl: its s_client drives TLS key updates and renegotiation (test_tls_stream.py).
  local pkgs=(chromium prometheus gcc libc6-dev openssl) missing=() p policy=/usr/sbin/policy-rc.d ours=""
  local status=0 include
  for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  # `make test-compiled` builds C extensions: Python's headers, where python3 lacks them.
  include=$(python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')
  [ -e "$include/Python.h" ] || dpkg -s python3-dev >/dev/null 2>&1 || missing+=(python3-dev)
  # The bench smoke test builds the image's wheel on Debian's own python3 (bench/image_build.py):
  # its headers and its venv module, whatever python3 comes first on PATH.
  if [ -x /usr/bin/python3 ]; then
    include=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_path("include"))')
    [ -e "$include/Python.h" ] || dpkg -s python3-dev >/dev/null 2>&1 || missing+=(python3-dev)
    /usr/bin/python3 -c 'import ensurepip, venv' 2>/dev/null \
      || dpkg -s python3-venv >/dev/null 2>&1 || missing+=(python3-venv)
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  log "apt-get install ${missing[*]} (no services started)"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\n# wslb hack/ci-packages.sh: no service starts during this install\nexit 101\n' \
      > "$policy" && chmod 755 "$policy" && ours=1 || return 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  { apt_get update -qq &&
    apt_get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || status=$?
  [ -z "$ours" ] || rm -f "$policy"
  return "$status"
}

# node_packages: Debian's nodejs and npm, only where no node or npm is on PATH at all (a
# machine that ships its own Node.js keeps it: Debian's npm would conflict with it).
node_packages() {
  command -v node >/dev/null && command -v npm >/dev/null && return 0
  log "apt-get install nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -qq && apt_get install -y -qq --no-install-recommends nodejs npm >/dev/null
}

timed "host prep" bash hack/host-prep.sh
timed "go tools (make e2e-assets)" bash hack/e2e-assets.sh
timed "chromium, prometheus, gcc (apt)" test_packages
timed "node + npm (apt, if none)" node_packages
timed "socket.io peer (npm ci)" bash tests/apps/npm-install.sh tests/apps/socketio >/dev/null
print_timings
