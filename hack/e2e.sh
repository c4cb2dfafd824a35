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

# remove_stale_clusters: e2e clusters whose node is no longer running were left by a run that
# was killed before its fixture could delete them (a session or CI stop ends every process).
# Running ones may belong to a concurrent run and are left alone.
remove_stale_clusters() {
  local kind name state
  kind=$WSLB_CACHE/kind/$KIND_VERSION/kind
  [ -x "$kind" ] || kind=$(command -v kind) || return 0
  for name in $("$kind" get clusters 2>/dev/null | grep '^wslb-e2e-' || true); do
    state=$(podman inspect -f '{{.State.Status}}' "$name-control-plane" 2>/dev/null || echo missing)
    if [ "$state" != running ]; then
      log "deleting stale e2e cluster $name (node $state)"
      "$kind" delete cluster --name "$name" >/dev/null 2>&1 || true
    fi
  done
}

start=$SECONDS
prepare
select_provider
[ "${KIND_EXPERIMENTAL_PROVIDER:-}" != podman ] || remove_stale_clusters
log "running the e2e tier (provider ${KIND_EXPERIMENTAL_PROVIDER:-docker})"
set +e
timed "pytest tests/e2e" "$python" -m pytest tests/e2e -p no:cacheprovider -rs -v "$@"
status=$?
set -e
log "e2e tier: exit $status after $((SECONDS - start))s"
print_timings
exit "$status"
