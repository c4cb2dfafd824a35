"""What the e2e tests of the product share: the chart install, LoadBalancer and Listener
manifests, status reads, and where a client on the host reaches a LoadBalancer.

The data-plane Service has `externalTrafficPolicy: Local` (the client's address is kept), so a
NodePort answers only on the nodes that run a ready data plane; `entry_urls` gives the URLs
through those nodes, as an external load balancer health-checking the nodes would.
"""

from __future__ import annotations

from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.e2e.kind_cluster import REPO, Cluster

RELEASE = "wslb"
SYSTEM = "wslb-system"
CHART = REPO / "helm" / "wslb"
GROUP = "wslb.io"
LB_LABEL = "wslb.io/load-balancer"


def image_values(cluster: Cluster) -> list[str]:
    repository, _, tag = cluster.image.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def install(cluster: Cluster, *values: str) -> None:
    """`helm install` the chart into wslb-system (waits for the controller)."""
    cluster.kubectl("create", "namespace", SYSTEM, check=False)
    cluster.helm(
        "install",
        RELEASE,
        str(CHART),
        "-n",
        SYSTEM,
        "--wait",
        "--timeout",
        "180s",
        *image_values(cluster),
        *values,
    )


def load_balancer(name: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "tier": "slb.s1.small",
        "replicas": replicas,
        "service": {"type": "NodePort"},
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "LoadBalancer",
        "metadata": {"name": name},
        "spec": body,
    }


def listener(name: str, lb: str, backend: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "loadBalancerRef": {"name": lb},
        "protocol": "HTTP",
        "port": 8080,
        "backends": [{"serviceName": backend, "port": 8080}],
        "drainTimeoutSeconds": 3,
    }
    body.update(spec)
    return {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": "Listener",
        "metadata": {"name": name},
        "spec": body,
    }


def tls_secret(name: str, cert: str, key: str) -> dict[str, Any]:
    """A kubernetes.io/tls Secret holding a PEM certificate chain and key."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name},
        "type": "kubernetes.io/tls",
        "stringData": {"tls.crt": cert, "tls.key": key},
    }


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for item in obj.get("status", {}).get("conditions", []) or []:
        if item.get("type") == kind:
            return dict(item)
    return None


def programmed(cluster: Cluster, namespace: str, name: str) -> bool:
    obj = cluster.get("listener", name, "-n", namespace)
    found = condition(obj, "Programmed")
    return bool(
        found
        and found["status"] == "True"
        and found.get("observedGeneration") == obj["metadata"]["generation"]
    )


def data_plane_nodes(cluster: Cluster, namespace: str, lb: str) -> dict[str, str]:
    """Ready data-plane pod -> its node."""
    return cluster.pod_nodes(namespace, f"{LB_LABEL}={lb}")


def entry_urls(
    cluster: Cluster, namespace: str, lb: str, node_port: int, scheme: str = "ws"
) -> dict[str, str]:
    """Node -> URL of the LoadBalancer's NodePort through it, for the nodes that run a ready
    data plane (all of one mapping on a cluster whose nodes are not mapped one by one)."""
    nodes = sorted(set(data_plane_nodes(cluster, namespace, lb).values()))
    return {node: cluster.url(node_port, scheme=scheme, node=node) for node in nodes}


def entry_url(cluster: Cluster, namespace: str, lb: str, node_port: int, scheme: str = "ws") -> str:
    """One URL that reaches the LoadBalancer (waits for a ready data plane)."""

    def first() -> str | None:
        urls = entry_urls(cluster, namespace, lb, node_port, scheme)
        return next(iter(urls.values()), None)

    return cluster.wait_for(first, timeout=180, what=f"a ready data plane of {lb}")


def open_ws(url: str, **kwargs: Any) -> ClientConnection:
    return connect(url, open_timeout=10, close_timeout=5, **kwargs)


def whoami(ws: ClientConnection) -> str:
    ws.send("whoami")
    answer = ws.recv(timeout=10)
    assert isinstance(answer, str)
    return answer


def reach(cluster: Cluster, url: str, **kwargs: Any) -> str:
    """Connect (retrying while the data plane comes up) and return who answered."""

    def attempt() -> str | None:
        try:
            with open_ws(url, **kwargs) as ws:
                return whoami(ws)
        except (OSError, ConnectionClosed, TimeoutError, Exception):
            return None

    return cluster.wait_for(attempt, timeout=120, what=f"a WebSocket echo through {url}")
