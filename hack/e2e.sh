#!/usr/bin/env bash
# The e2e tier, as `make e2e`, `make test` and CI run it: installs and builds whatever is
# missing (host packages and settings, the pinned Go tools, the node image, our image), then
# runs pytest tests/e2e, whose session fixture creates a kind cluster, loads our image, and
# deletes the cluster at the end. Exits non-zero on any failure.
#
# WSLB_KIND_NODE_IMAGE=kindest/node:...  use that node image: no host prep, no node build.
# WSLB_E2E_CLUSTER=existing               run the tests on the current kubeconfig's cluster.
# Extra arguments go to pytest (e.g. hack/e2e.sh -k helm).
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

# python: the project's venv (make venv) has pytest and the test dependencies.
python=${WSLB_PYTHON:-.venv/bin/python}
[ -x "$python" ] || die "$python not found: run \`make venv\` first"

# prepare: everything the tests need that may be missing on a fresh machine.
prepare() {
  if [ -z "${WSLB_KIND_NODE_IMAGE:-}" ]; then
    timed "host prep" bash hack/host-prep.sh
    timed "go tools (cached)" bash hack/e2e-assets.sh
    timed "node image (cached)" bash hack/node-image.sh
  else
    # a registry is reachable: kubectl, kind and helm may come from PATH; build the rest
    timed "go tools (cached)" bash hack/e2e-assets.sh kind helm
  fi
  timed "our image" bash hack/image.sh
}

# provider: kind tries docker first; where no Docker engine answers, use podman.
select_provider() {
  if [ -z "${KIND_EXPERIMENTAL_PROVIDER:-}" ] && ! docker info >/dev/null 2>&1; then
    export KIND_EXPERIMENTAL_PROVIDER=podman
  fi
}

start=$SECONDS
prepare
select_provider
log "running the e2e tier (provider ${KIND_EXPERIMENTAL_PROVIDER:-docker})"
set +e
timed "pytest tests/e2e" "$python" -m pytest tests/e2e -p no:cacheprovider -rs -v "$@"
status=$?
set -e
log "e2e tier: exit $status after $((SECONDS - start))s"
print_timings
exit "$status"
