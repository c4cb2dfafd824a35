#!/usr/bin/env bash
# A kind cluster for a person (make cluster-up / make cluster-down): the same cluster the e2e
# fixture makes — our node image (or WSLB_KIND_NODE_IMAGE), our image loaded, NodePorts
# 30080-30089 on 127.0.0.1 — but kept until `down`. `up` prints the KUBECONFIG to use;
# afterwards WSLB_E2E_CLUSTER=existing runs the e2e tests on it.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

name=${WSLB_CLUSTER_NAME:-wslb}
python=${WSLB_PYTHON:-.venv/bin/python}
[ -x "$python" ] || python=python3
if [ -z "${KIND_EXPERIMENTAL_PROVIDER:-}" ] && ! docker info >/dev/null 2>&1; then
  export KIND_EXPERIMENTAL_PROVIDER=podman
fi

case ${1:-} in
  up)
    if [ -z "${WSLB_KIND_NODE_IMAGE:-}" ]; then
      bash hack/host-prep.sh
      bash hack/e2e-assets.sh
      bash hack/node-image.sh
    else
      bash hack/e2e-assets.sh kind helm
    fi
    bash hack/image.sh
    "$python" -m tests.e2e.kind_cluster up --name "$name"
    ;;
  down)
    "$python" -m tests.e2e.kind_cluster down --name "$name"
    ;;
  *) die "usage: hack/cluster.sh up|down" ;;
esac
