#!/usr/bin/env bash
# make kind-demo: wslb on a local kind cluster in one command, for a person with Docker or
# podman, kind, helm and kubectl. Builds our image, creates the cluster (kind_cluster.py: NodePorts
# 30080-30089 mapped to 127.0.0.1), loads the image, installs the chart with its defaults, applies
# examples/kind-demo/ (echo backend, a LoadBalancer with a WS and a WSS listener) and prints the
# ws:// and wss:// URLs once a WebSocket handshake through them succeeds.
#
#   hack/kind-demo.sh [up]     create and install (fails if the cluster exists: `down` first)
#   hack/kind-demo.sh down     delete the cluster
#
# Node image: WSLB_KIND_NODE_IMAGE if set; else, with kind on PATH, kind's own default node image
# (pulled); else this repository's built tools and node image (hack/host-prep.sh,
# e2e-assets.sh, node-image.sh), as on machines with no registry.
set -euo pipefail
cd "$(dirname "$0")/.."
source hack/lib.sh

NAME=${WSLB_DEMO_CLUSTER:-wslb-demo}
NAMESPACE=wslb-demo
SYSTEM=wslb-system
WS_NODE_PORT=30080
WSS_NODE_PORT=30081
DEADLINE=${WSLB_DEMO_TIMEOUT:-300}   # seconds for each wait below

# tool NAME: $WSLB_<NAME>, then the build cache of hack/e2e-assets.sh, then PATH (the order of
# tests/e2e/kind_cluster.py, which creates the cluster with the same tools).
tool() {
  local var cached
  var=WSLB_$(tr '[:lower:]' '[:upper:]' <<<"$1")
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  case $1 in
    kind) cached=$WSLB_CACHE/kind/$KIND_VERSION/kind ;;
    helm) cached=$WSLB_CACHE/helm/$HELM_VERSION/helm ;;
    kubectl) cached=$WSLB_CACHE/k8s/$K8S_VERSION/kubectl ;;
  esac
  if [ -x "$cached" ]; then echo "$cached"; return; fi
  command -v "$1" || die "$1 not found: put it on PATH (or run \`make e2e-assets\`)"
}

# The engine builds the image and the kind provider runs the nodes: one and the same, so that
# `kind load` finds the image (docker when its engine answers, else podman).
if [ -z "${KIND_EXPERIMENTAL_PROVIDER:-}" ]; then
  if docker info >/dev/null 2>&1; then KIND_EXPERIMENTAL_PROVIDER=docker; else KIND_EXPERIMENTAL_PROVIDER=podman; fi
fi
export KIND_EXPERIMENTAL_PROVIDER WSLB_CONTAINER_ENGINE=${WSLB_CONTAINER_ENGINE:-$KIND_EXPERIMENTAL_PROVIDER}
python=${WSLB_PYTHON:-python3}

# node_image: see the header. kind's default is the node image its release was tested with;
# kind prints it nowhere, but it is a constant in the binary.
prepare_node_image() {
  [ -z "${WSLB_KIND_NODE_IMAGE:-}" ] || return 0
  if command -v kind >/dev/null && [ -z "${WSLB_KIND:-}" ]; then
    WSLB_KIND=$(command -v kind)
    WSLB_KIND_NODE_IMAGE=$(grep -ao 'kindest/node:v[0-9.]*@sha256:[0-9a-f]\{64\}' "$WSLB_KIND" | head -1 || true)
    [ -n "$WSLB_KIND_NODE_IMAGE" ] || die "cannot tell kind's default node image: set WSLB_KIND_NODE_IMAGE=kindest/node:<version>"
    export WSLB_KIND WSLB_KIND_NODE_IMAGE
    log "node image: $WSLB_KIND_NODE_IMAGE (kind's default)"
  else
    timed "host prep" bash hack/host-prep.sh
    timed "go tools (cached)" bash hack/e2e-assets.sh
    timed "node image (cached)" bash hack/node-image.sh
  fi
}

kubectl() { command "$(tool kubectl)" --kubeconfig "$KUBECONFIG" "$@"; }
helm() { command "$(tool helm)" --kubeconfig "$KUBECONFIG" "$@"; }

# host_port NODE_PORT: where the cluster maps that NodePort on 127.0.0.1 (kind_cluster's record).
host_port() {
  "$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["node_ports"][sys.argv[2]])' \
    "$WSLB_CACHE/cluster-up.json" "$1"
}

# tls_secret: a self-signed certificate for localhost and 127.0.0.1, made by our image (no
# openssl needed on the host), as the Secret the WSS listener names.
tls_secret() {
  local dir pem
  dir=$(mktemp -d)
  pem=$("$WSLB_CONTAINER_ENGINE" run --rm --network none "$WSLB_RELEASE_IMAGE" python3 -c \
    'from dataplane.certs import self_signed; c, k = self_signed(["localhost", "127.0.0.1"], days=30); print(c + k)')
  sed -n '/BEGIN CERTIFICATE/,/END CERTIFICATE/p' <<<"$pem" >"$dir/tls.crt"
  sed -n '/BEGIN PRIVATE KEY/,/END PRIVATE KEY/p' <<<"$pem" >"$dir/tls.key"
  kubectl -n "$NAMESPACE" create secret tls echo-tls --cert "$dir/tls.crt" --key "$dir/tls.key" \
    --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  rm -rf "$dir"
}

# handshake URL: true once a WebSocket upgrade through URL is answered 101 (stdlib only).
handshake() {
  "$python" - "$1" <<'PY'
import base64, os, socket, ssl, sys
from urllib.parse import urlsplit
url = urlsplit(sys.argv[1])
sock = socket.create_connection((url.hostname, url.port), timeout=5)
if url.scheme == "wss":
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # the demo's self-signed cert
    sock = context.wrap_socket(sock, server_hostname=url.hostname)
key = base64.b64encode(os.urandom(16)).decode()
sock.sendall(f"GET / HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
sys.exit(0 if sock.recv(64).startswith(b"HTTP/1.1 101") else 1)
PY
}

# wait_handshakes URL...: poll each URL until it answers a handshake, with a deadline.
wait_handshakes() {
  local deadline=$((SECONDS + DEADLINE)) url
  for url in "$@"; do
    until handshake "$url" 2>/dev/null; do
      [ $SECONDS -lt $deadline ] || die "no WebSocket handshake through $url after ${DEADLINE}s"
      sleep 2
    done
  done
}

up() {
  local kind
  prepare_node_image
  kind=$(tool kind)
  if KIND_EXPERIMENTAL_PROVIDER=$KIND_EXPERIMENTAL_PROVIDER "$kind" get clusters 2>/dev/null | grep -qx "$NAME"; then
    die "cluster $NAME exists: \`make kind-demo-down\` first"
  fi
  # only the appVersion tag the chart runs: the :dev tag belongs to the e2e tier
  timed "our image" env WSLB_IMAGE="$WSLB_RELEASE_IMAGE" bash hack/image.sh
  local start=$SECONDS
  KUBECONFIG=$(WSLB_IMAGE=$WSLB_RELEASE_IMAGE "$python" -m tests.e2e.kind_cluster up --name "$NAME" \
    | sed -n 's/^export KUBECONFIG=//p')
  TIMINGS+=("$(printf '%-28s %4ds' "kind cluster + image load" $((SECONDS - start)))")
  [ -n "$KUBECONFIG" ] || die "kind_cluster up printed no KUBECONFIG"
  export KUBECONFIG
  log "helm install wslb (chart defaults: image $WSLB_RELEASE_IMAGE)"
  timed "helm install" helm upgrade --install wslb helm/wslb --namespace "$SYSTEM" \
    --create-namespace --wait --timeout "${DEADLINE}s" >/dev/null
  kubectl create namespace "$NAMESPACE" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  tls_secret
  kubectl -n "$NAMESPACE" apply -f examples/kind-demo/echo.yaml -f examples/kind-demo/loadbalancer.yaml
  timed "echo backend" kubectl -n "$NAMESPACE" rollout status deployment/echo --timeout "${DEADLINE}s"
  timed "listeners Programmed" kubectl -n "$NAMESPACE" wait --for=condition=Programmed \
    listener/ws listener/wss --timeout "${DEADLINE}s"
  local ws wss
  ws="ws://127.0.0.1:$(host_port $WS_NODE_PORT)/"
  wss="wss://127.0.0.1:$(host_port $WSS_NODE_PORT)/"
  timed "ws:// and wss:// answer" wait_handshakes "$ws" "$wss"
  print_timings
  cat <<EOF

wslb is running on kind cluster $NAME. Open a WebSocket to either listener (any message is
echoed; the text "whoami" answers with the echo pod's name):

  $ws
  $wss    (self-signed certificate for 127.0.0.1)

  export KUBECONFIG=$KUBECONFIG
  kubectl -n $NAMESPACE get loadbalancers,listeners,pods
  python3 -m websockets $ws      # an interactive client (pip install websockets)

Delete it all with: make kind-demo-down
EOF
}

case ${1:-up} in
  up) up ;;
  down) "$python" -m tests.e2e.kind_cluster down --name "$NAME" ;;
  *) die "usage: hack/kind-demo.sh [up|down]" ;;
esac
