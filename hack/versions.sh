# Pinned versions of everything the e2e tier builds; sourced by the hack/ scripts.
# Changing one here means regenerating the matching tools/<name>/go.mod (hack/gen-tools-mods.sh).
K8S_VERSION=v1.36.3
KIND_VERSION=v0.33.0
ETCD_VERSION=v3.6.8
COREDNS_VERSION=v1.15.0
HELM_VERSION=v3.22.0
# crictl inside the node image: `kind export logs` and people debugging a node call it.
CRICTL_VERSION=v1.36.0
# Tags of the control-plane images that kubeadm asks for (kubeadm config images list).
PAUSE_TAG=3.10.2
ETCD_IMAGE_TAG="${ETCD_VERSION#v}-0"
COREDNS_IMAGE_TAG="${COREDNS_VERSION}"
K8S_TOOL_PACKAGES=(
  k8s.io/kubernetes/cmd/kube-apiserver
  k8s.io/kubernetes/cmd/kube-controller-manager
  k8s.io/kubernetes/cmd/kube-scheduler
  k8s.io/kubernetes/cmd/kube-proxy
  k8s.io/kubernetes/cmd/kubelet
  k8s.io/kubernetes/cmd/kubeadm
  k8s.io/kubernetes/cmd/kubectl
)
# Where built binaries live, outside the clone, reused across runs.
WSLB_CACHE="${WSLB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wslb}"
