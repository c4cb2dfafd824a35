#!/usr/bin/env bash
# Run by .ci/run before `make venv` / `make test` (when executable): everything a fresh machine
# lacks that the tiers need outside Python — the Debian packages and host settings of the e2e
# tier (hack/host-prep.sh), and the pinned Go tools in ~/.cache/wslb (hack/e2e-assets.sh),
# which the integration tier also uses (a real kube-apiserver, etcd, kubectl and helm). Built
# before the tiers run, so that on a fresh machine those tests run instead of skipping.
# Both steps only do what is missing: on a warm machine this takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

timed "host prep" bash hack/host-prep.sh
timed "go tools (make e2e-assets)" bash hack/e2e-assets.sh
print_timings
