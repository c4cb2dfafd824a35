"""A real Socket.IO app on kind: Socket.IO's own server (Node, `socket.io`) in two pods behind
a Service, two data-plane replicas, and Socket.IO's own client on the host with its default
transports (HTTP long-polling, then the upgrade to websocket) through the NodePort.

The LoadBalancer's Service spreads connections over both data planes (externalTrafficPolicy
Cluster), and the client opens several connections per session (a long poll, its POSTs, the
upgrade): each session works only if every replica sends each of its requests to the pod
that holds the session, by the sticky cookie one replica issued. The test image is ours
plus the node binary of this machine and the pinned npm packages (tests/apps/socketio),
built under a tag of its own per run and removed from podman at the end (the nodes' copy
goes with the cluster).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.apps import socketio_peer
from tests.e2e import product
from tests.e2e.kind_cluster import Cluster, run
from tests.e2e.manifests import RESTRICTED_CONTAINER, RESTRICTED_POD, WSLB_UID, dump
from tests.e2e.product import LB_LABEL, RELEASE, SYSTEM, entry_url, programmed

pytestmark = pytest.mark.e2e

LB = "chat"
APP = "socketio"
PORT = 8080
NODE_PORT = 30084
IMAGE = "localhost/wslb-socketio"
SESSIONS = 6


def build_image(cluster: Cluster, node_modules: Path, image: str) -> None:
    """Our image plus node and the Socket.IO server: no registry, nothing downloaded."""
    node = shutil.which("node")
    assert node is not None, "node is needed (hack/ci-packages.sh installs it)"
    with tempfile.TemporaryDirectory(prefix="wslb-socketio-") as tmp:
        context = Path(tmp)
        shutil.copy2(node, context / "node")
        shutil.copytree(node_modules, context / "app" / "node_modules", symlinks=True)
        shutil.copy2(socketio_peer.PEER / "server.js", context / "app" / "server.js")
        (context / "Containerfile").write_text(
            f"FROM {cluster.image}\n"
            "COPY node /usr/local/bin/node\n"
            "COPY app /opt/socketio\n"
            f"USER {WSLB_UID}\n"
            'ENTRYPOINT ["/usr/local/bin/node", "/opt/socketio/server.js"]\n'
        )
        subprocess.run(
            ["podman", "build", "-q", "--pull=never", "-t", image, str(context)],
            check=True,
            capture_output=True,
            timeout=300,
        )
    cluster.load_image(image)


def remove_image(image: str) -> None:
    """Untag the image in podman (deleting it when no other tag holds it); an image that
    was never built is no error, any other failure is."""
    run(["podman", "image", "rm", "--ignore", image], timeout=120)


def socketio_deployment(image: str) -> dict[str, Any]:
    container = {
        "name": APP,
        "image": image,
        "imagePullPolicy": "Never",
        # server.js <name> <port>; the pod name names the backend in every answer
        "args": ["$(POD_NAME)", str(PORT)],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "SOCKETIO_HOST", "value": "0.0.0.0"},
        ],
        "ports": [{"name": "http", "containerPort": PORT}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 2},
        "securityContext": RESTRICTED_CONTAINER,
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "labels": {"app": APP}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "enableServiceLinks": False,
                    "securityContext": RESTRICTED_POD,
                    "containers": [container],
                },
            },
        },
    }


def socketio_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": APP},
        "spec": {"selector": {"app": APP}, "ports": [{"name": "http", "port": PORT}]},
    }


@pytest.fixture(scope="module")
def node_modules() -> Path:
    return socketio_peer.install()


@pytest.fixture(scope="module")
def socketio_image(cluster: Cluster, node_modules: Path) -> Iterator[str]:
    """The Socket.IO server image, loaded into the cluster; a tag of this run's own, so
    that removing it never touches a concurrent run's image."""
    image = f"{IMAGE}:e2e-{secrets.token_hex(4)}"
    try:
        build_image(cluster, node_modules, image)
        yield image
    finally:
        remove_image(image)


@pytest.fixture(scope="module")
def chat(cluster: Cluster, namespace: str, socketio_image: str) -> Iterator[str]:
    """Two Socket.IO pods and a LoadBalancer with two data planes and a sticky listener;
    yields the namespace."""
    product.install(cluster)
    ns = namespace
    cluster.apply(dump(socketio_deployment(socketio_image), socketio_service()), ns)
    cluster.apply(
        dump(
            product.load_balancer(
                LB,
                replicas=2,
                service={"type": "NodePort", "externalTrafficPolicy": "Cluster"},
            ),
            product.listener(
                "chat",
                LB,
                APP,
                nodePort=NODE_PORT,
                scheduler="rr",
                stickySession={"mode": "insert"},
            ),
        ),
        ns,
    )
    cluster.rollout(APP, ns)
    cluster.rollout(f"{LB}-wslb", ns, timeout=180)
    cluster.wait_for(lambda: programmed(cluster, ns, "chat") or None, what="chat Programmed")
    yield ns
    cluster.kubectl("delete", "loadbalancer", LB, "-n", ns, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", timeout=300)


def test_socketio_polls_then_upgrades_on_one_pod_through_two_data_planes(
    cluster: Cluster, chat: str, node_modules: Path
) -> None:
    ns = chat
    url = entry_url(cluster, ns, LB, NODE_PORT, scheme="http")
    pods = {p["metadata"]["name"] for p in cluster.ready_pods(ns, f"app={APP}")}
    planes = set(cluster.pod_nodes(ns, f"{LB_LABEL}={LB}"))
    assert len(pods) == 2 and len(planes) == 2

    def session() -> dict[str, Any]:
        return asyncio.run(socketio_peer.run_client(node_modules, url, count=3, seconds=20))

    # the first session may meet a data plane whose endpoints are not all ready yet
    cluster.wait_for(lambda: session()["code"] == 0 or None, timeout=90, what="a session")
    served: set[str] = set()
    for _ in range(SESSIONS):
        result = session()
        assert result["code"] == 0, result
        assert result["transports"] == ["polling", "websocket"], result
        backends = {ack["backend"] for ack in result["acks"]}
        assert len(backends) == 1, result  # every message of a session on one pod
        assert {ack["transport"] for ack in result["acks"]} == {"websocket"}
        served |= backends
    assert served <= pods
    # each data plane relayed Socket.IO requests: stickiness held across replicas
    for plane in planes:
        log = cluster.kubectl("logs", "-n", ns, plane, "--tail=-1").stdout
        assert "/socket.io/" in log, f"{plane} relayed no Socket.IO request"
