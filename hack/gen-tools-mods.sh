#!/usr/bin/env bash
# Regenerates the pinned tools modules for kind, etcd, CoreDNS, helm and crictl (tools/<name>/go.mod
# and go.sum), each in a module of its own so that their dependency graphs never have to agree
# with Kubernetes' or with each other. The Kubernetes module has its own generator
# (hack/gen-k8s-tools-mod.sh) because it needs replace lines. Run only to change a version.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.sh
export GOTOOLCHAIN=local

# gen NAME PACKAGE@VERSION: a fresh module whose only job is to pin one tool.
gen() {
  local name=$1 spec=$2 dir=tools/$1
  mkdir -p "$dir"
  rm -f "$dir/go.mod" "$dir/go.sum"
  (cd "$dir" && go mod init "github.com/wslb/wslb/tools/$name" >/dev/null 2>&1 \
     && go get -tool "$spec" && go mod tidy)
  echo "wrote $dir/go.mod and go.sum ($spec)" >&2
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(kind etcd coredns helm crictl)
for t in "${targets[@]}"; do
  case $t in
    kind) gen kind "sigs.k8s.io/kind@${KIND_VERSION}" ;;
    etcd) gen etcd "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" ;;
    coredns) gen coredns "github.com/coredns/coredns@${COREDNS_VERSION}" ;;
    helm) gen helm "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" ;;
    crictl) gen crictl "sigs.k8s.io/cri-tools/cmd/crictl@${CRICTL_VERSION}" ;;
    *) echo "unknown tool: $t" >&2; exit 2 ;;
  esac
done
