#!/usr/bin/env bash
# Builds the pinned Go tools the e2e tier needs into the cache outside the clone, only those
# that are missing, and prints what it built and how long each took.
#
# Why from source: this machine reaches the Go module proxy but no release download site, so
# kubelet, kubeadm, kubectl, the control-plane binaries, etcd, CoreDNS, kind and helm are
# compiled from their Go modules, pinned by the go.mod/go.sum files under tools/.
# Usage: hack/e2e-assets.sh [k8s|kind|etcd|coredns|helm|crictl|pause ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/versions.sh

export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
# Builds take minutes on 2 cores; stay polite to whatever else runs on the machine.
NICE=(nice -n 10)
root=$PWD
summary=()

# k8s_ldflags: the version stamp kubectl/kubeadm/kubelet report and kubeadm checks against.
k8s_ldflags() {
  local v=$K8S_VERSION major minor
  major=${v#v}; major=${major%%.*}
  minor=${v#v*.}; minor=${minor%%.*}
  local flags="-s -w" pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${pkg}.gitVersion=${v} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
    flags+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

# go_bin_name PKG: the file name `go build -o DIR/` gives a main package (the last path
# element, or the one before a /vN major-version suffix).
go_bin_name() {
  local p=$1
  [[ $p =~ /v[0-9]+$ ]] && p=${p%/v*}
  basename "$p"
}

# bin_name TOOL PKG: the name we install it under: a module root that is the whole tool (etcd's
# server/v3) takes the tool's name.
bin_name() {
  if [[ $2 =~ /v[0-9]+$ ]]; then echo "$1"; else go_bin_name "$2"; fi
}

# build NAME MODULE_DIR OUT_DIR LDFLAGS PACKAGE...: one `go build` for all packages of a module,
# into a temporary directory moved into place only when every binary linked, so an
# interrupted build never looks cached.
build() {
  local name=$1 mod=$2 out=$3 ldflags=$4; shift 4
  local missing=0 pkg
  for pkg in "$@"; do [ -x "$out/$(bin_name "$name" "$pkg")" ] || missing=1; done
  if [ "$missing" = 0 ]; then
    summary+=("$(printf '%-8s cached   %s' "$name" "$out")")
    return
  fi
  echo ">> building $name ($*) into $out" >&2
  local tmp start=$SECONDS
  mkdir -p "$(dirname "$out")"
  tmp=$(mktemp -d "$(dirname "$out")/.build.XXXXXX")
  (cd "$root/$mod" && "${NICE[@]}" go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@")
  # go names the binary of .../server/v3 "server"; we want the tool's name
  for pkg in "$@"; do
    [ -e "$tmp/$(bin_name "$name" "$pkg")" ] || mv "$tmp/$(go_bin_name "$pkg")" "$tmp/$(bin_name "$name" "$pkg")"
  done
  mkdir -p "$out"
  mv "$tmp"/* "$out"/
  rmdir "$tmp"
  summary+=("$(printf '%-8s built    %s in %ds' "$name" "$out" $((SECONDS - start)))")
}

# pause_key: the pause tag plus a hash of our pause source.
pause_key() {
  echo "${PAUSE_TAG}-$(cat tools/pause/go.mod tools/pause/main.go | sha256sum | cut -c1-12)"
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(k8s etcd kind helm coredns crictl pause)
for t in "${targets[@]}"; do
  case $t in
    k8s) build k8s tools/k8s "$WSLB_CACHE/k8s/$K8S_VERSION" "$(k8s_ldflags)" "${K8S_TOOL_PACKAGES[@]}" ;;
    kind) build kind tools/kind "$WSLB_CACHE/kind/$KIND_VERSION" "-s -w" sigs.k8s.io/kind ;;
    etcd) build etcd tools/etcd "$WSLB_CACHE/etcd/$ETCD_VERSION" "-s -w" go.etcd.io/etcd/server/v3 ;;
    coredns) build coredns tools/coredns "$WSLB_CACHE/coredns/$COREDNS_VERSION" "-s -w" github.com/coredns/coredns ;;
    helm) build helm tools/helm "$WSLB_CACHE/helm/$HELM_VERSION" \
      "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
      helm.sh/helm/v3/cmd/helm ;;
    # our own source: the cache key includes its hash so an edit rebuilds it
    crictl) build crictl tools/crictl "$WSLB_CACHE/crictl/$CRICTL_VERSION" "-s -w" sigs.k8s.io/cri-tools/cmd/crictl ;;
    pause) build pause tools/pause "$WSLB_CACHE/pause/$(pause_key)" "-s -w" github.com/wslb/wslb/tools/pause ;;
    *) echo "unknown asset: $t" >&2; exit 2 ;;
  esac
done
printf '%s\n' "${summary[@]}"
