#!/usr/bin/env bash
# Builds the kind node image from sources ($NODE_IMAGE_NAME), for machines where kindest/node
# cannot be pulled: the debootstrap base + Debian's systemd/containerd/runc/CNI plugins + our
# kubelet/kubeadm/kubectl, with the control-plane images that kubeadm asks for built from our
# Go binaries and preloaded into the node's containerd (ctr images import --no-unpack: this
# machine's overlay cannot unpack whiteout files inside the image; kind mounts /var as a
# volume at run time and containerd unpacks there).
#
# Rebuilt only when its inputs change: the image carries a label with a hash of them.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

K8S_BIN=$WSLB_CACHE/k8s/$K8S_VERSION
ETCD_BIN=$WSLB_CACHE/etcd/$ETCD_VERSION/etcd
COREDNS_BIN=$WSLB_CACHE/coredns/$COREDNS_VERSION/coredns
CRICTL_BIN=$WSLB_CACHE/crictl/$CRICTL_VERSION/crictl

# inputs_hash: everything that goes into the node image, so a change to any of them rebuilds.
inputs_hash() {
  {
    cat hack/versions.sh hack/node-image.sh
    find images/node images/control-plane tools/pause -type f | sort | xargs cat
    sha256sum "$K8S_BIN"/* "$ETCD_BIN" "$COREDNS_BIN" "$CRICTL_BIN" | cut -d' ' -f1
    podman image inspect -f '{{.Id}}' "$BASE_IMAGE_NAME"
  } | sha256sum | cut -c1-16
}

# control_plane_images DIR: builds each image `kubeadm config images list` asks for (CoreDNS
# at our pinned tag) and saves it as a docker archive into DIR.
control_plane_images() {
  local out=$1 ctx name img
  ctx=$(mktemp -d /var/tmp/wslb-cp.XXXXXX)
  cp images/control-plane/Containerfile.* "$ctx"/
  for name in kube-apiserver kube-controller-manager kube-scheduler kube-proxy; do
    cp "$K8S_BIN/$name" "$ctx/"
  done
  cp "$ETCD_BIN" "$COREDNS_BIN" "$(ls -d "$WSLB_CACHE"/pause/"$PAUSE_TAG"-*/ | tail -1)pause" "$ctx/"

  # build_one IMAGE CONTAINERFILE [BUILD-ARG...]
  build_one() {
    local image=$1 file=$2; shift 2
    local args=() a
    for a in "$@"; do args+=(--build-arg "$a"); done
    podman build -q --pull=never --layers=false --label wslb.e2e=control-plane "${args[@]}" \
      -t "$image" -f "$ctx/$file" "$ctx" >/dev/null
    podman save -q --format docker-archive -o "$out/$(basename "${image%%:*}").tar" "$image"
  }
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    build_one "registry.k8s.io/$name:$K8S_VERSION" Containerfile.static "BINARY=$name"
  done
  build_one "registry.k8s.io/kube-proxy:$K8S_VERSION" Containerfile.kube-proxy "BASE_IMAGE=$BASE_IMAGE_NAME"
  build_one "registry.k8s.io/etcd:$ETCD_IMAGE_TAG" Containerfile.static BINARY=etcd
  build_one "registry.k8s.io/coredns/coredns:$COREDNS_IMAGE_TAG" Containerfile.coredns
  build_one "registry.k8s.io/pause:$PAUSE_TAG" Containerfile.pause
  rm -rf "$ctx"
  # what kubeadm will ask for must be exactly what we built (CoreDNS aside: kind's config sets it)
  local want
  want=$("$K8S_BIN/kubeadm" config images list --kubernetes-version "$K8S_VERSION" | grep -v coredns)
  for img in $want; do
    podman image exists "$img" || die "kubeadm wants $img, which was not built"
  done
}

# node_image ARCHIVES HASH: the systemd/containerd layer, then the preload into containerd in
# a running build container, committed with systemd as the entry point.
node_image() {
  local archives=$1 hash=$2 ctx stage=localhost/wslb-kind-node-stage:latest tar
  ctx=$(mktemp -d /var/tmp/wslb-node.XXXXXX)
  cp -a images/node/. "$ctx/"
  mkdir -p "$ctx/bin"
  cp "$K8S_BIN/kubelet" "$K8S_BIN/kubeadm" "$K8S_BIN/kubectl" "$CRICTL_BIN" "$ctx/bin/"
  mkdir -p "$ctx/files/kind"
  echo "$K8S_VERSION" > "$ctx/files/kind/version"
  podman build -q --pull=never --layers=false --label wslb.e2e=node-stage \
    --build-arg "BASE_IMAGE=$BASE_IMAGE_NAME" -t "$stage" -f "$ctx/Containerfile" "$ctx" >/dev/null
  rm -rf "$ctx"

  build_cid=$(podman run -d --privileged --entrypoint sleep "$stage" infinity)
  local cid=$build_cid
  # always remove the build container, whatever fails below
  trap 'podman rm -f -t 0 "$build_cid" >/dev/null 2>&1 || true' EXIT
  podman exec -d "$cid" sh -c 'containerd >/var/log/containerd-build.log 2>&1' >/dev/null
  local deadline=$((SECONDS + 60))
  until podman exec "$cid" ctr version >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { podman exec "$cid" cat /var/log/containerd-build.log >&2; die "containerd did not start in the build container"; }
    sleep 1
  done
  for tar in "$archives"/*.tar; do
    # (no pinned label: Debian's ctr 1.6 lacks --label; kind's kubelet config never GCs images)
    podman exec -i "$cid" ctr --namespace=k8s.io images import --no-unpack - < "$tar" >/dev/null
  done
  log "preloaded: $(podman exec "$cid" ctr --namespace=k8s.io images list -q | grep -v '^sha256:' | tr '\n' ' ')"
  podman exec "$cid" sh -c 'kill $(pidof containerd); while pidof containerd >/dev/null; do sleep 0.2; done
    rm -rf /var/log/containerd-build.log /run/containerd'
  podman commit -q \
    --change 'ENTRYPOINT ["/sbin/init"]' --change 'CMD []' \
    --change 'STOPSIGNAL SIGRTMIN+3' --change 'ENV container=docker' \
    --change "LABEL wslb.node-inputs=$hash" --change "LABEL wslb.e2e=node" \
    "$cid" "$NODE_IMAGE_NAME" >/dev/null
  podman rm -f -t 0 "$cid" >/dev/null
  trap - EXIT
  podman rmi "$stage" >/dev/null 2>&1 || true
  prune_ours
}

main() {
  bash hack/host-prep.sh
  bash hack/base-image.sh
  bash hack/e2e-assets.sh k8s etcd coredns crictl pause
  local hash have work
  hash=$(inputs_hash)
  have=$(podman image inspect -f '{{index .Labels "wslb.node-inputs"}}' "$NODE_IMAGE_NAME" 2>/dev/null || true)
  if [ "$have" = "$hash" ] && [ "${WSLB_REBUILD:-}" != 1 ]; then
    log "node image $NODE_IMAGE_NAME is up to date ($hash)"
    return
  fi
  work=$(mktemp -d /var/tmp/wslb-archives.XXXXXX)
  timed "control-plane images" control_plane_images "$work"
  timed "node image" node_image "$work" "$hash"
  rm -rf "$work"
  log "built $NODE_IMAGE_NAME ($(podman image inspect -f '{{.Size}}' "$NODE_IMAGE_NAME" | numfmt --to=iec))"
  print_timings
}
main "$@"
