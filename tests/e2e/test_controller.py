"""The whole product on kind: the chart installs the controller, which runs data planes for
LoadBalancers and pushes them Listeners and endpoints; clients on the host reach the echo
backends through the data plane's NodePort on 127.0.0.1.

Everything runs as pods of our image, the controller under the chart's ServiceAccount, so a
missing RBAC verb fails here rather than in production. The tests run in file order and
share one install (a module fixture) because each step builds on the previous state.
"""

from __future__ import annotations

import json
import ssl
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from dataplane.certs import self_signed
from tests.e2e import product
from tests.e2e.kind_cluster import Cluster
from tests.e2e.manifests import dump, echo_deployment
from tests.e2e.product import (
    RELEASE,
    SYSTEM,
    entry_url,
    open_ws,
    programmed,
    reach,
    tls_secret,
    whoami,
)

pytestmark = pytest.mark.e2e

LB = "edge"
HTTP_NODE_PORT = 30081
HTTPS_NODE_PORT = 30082
ECHO = "echo"


def load_balancer() -> dict[str, Any]:
    return product.load_balancer(LB, replicas=1)


def listener(name: str, **spec: Any) -> dict[str, Any]:
    return product.listener(name, LB, ECHO, **spec)


def echo_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": ECHO},
        "spec": {
            "selector": {"app": ECHO},
            "ports": [{"name": "ws", "port": 8080, "targetPort": 8080}],
        },
    }


def echo_pods(cluster: Cluster, namespace: str) -> set[str]:
    return {p["metadata"]["name"] for p in cluster.ready_pods(namespace, f"app={ECHO}")}


def data_planes(cluster: Cluster, namespace: str) -> set[str]:
    pods = cluster.get("pods", "-n", namespace, "-l", f"wslb.io/load-balancer={LB}")["items"]
    return {p["metadata"]["name"] for p in pods}


def lb_url(cluster: Cluster, namespace: str, node_port: int, scheme: str = "ws") -> str:
    return entry_url(cluster, namespace, LB, node_port, scheme)


@pytest.fixture(scope="module")
def installed(cluster: Cluster, namespace: str) -> str:
    """The chart installed, echo backends running; yields the test namespace."""
    product.install(cluster)
    # A backend that never closes by itself on SIGTERM: a 1001 the client sees is the LB's.
    cluster.apply(
        dump(
            echo_deployment(ECHO, replicas=2, hold_on_sigterm=True, grace_seconds=30),
            echo_service(),
        ),
        namespace,
    )
    cluster.rollout(ECHO, namespace)
    return namespace


def test_listener_is_programmed_and_clients_reach_backends_through_the_node_port(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    cluster.apply(dump(load_balancer(), listener("ws", nodePort=HTTP_NODE_PORT)), ns)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "deployment", f"{LB}-wslb", "-n", ns, check=False).returncode
            == 0
            or None
        ),
        what="the controller to create the data-plane Deployment",
    )
    cluster.rollout(f"{LB}-wslb", ns, timeout=180)
    cluster.wait_for(lambda: programmed(cluster, ns, "ws") or None, what="Listener Programmed")
    url = lb_url(cluster, ns, HTTP_NODE_PORT)
    seen = {reach(cluster, url) for _ in range(8)}
    assert seen == echo_pods(cluster, ns)
    printed = cluster.kubectl("get", "listeners", "-n", ns).stdout
    assert "PROGRAMMED" in printed.upper() and "True" in printed
    deployment = cluster.get("deployment", f"{LB}-wslb", "-n", ns)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "LoadBalancer"


def test_invalid_listener_is_rejected_by_the_api_server(cluster: Cluster, installed: str) -> None:
    bad = listener("bad", protocol="HTTPS")  # HTTPS without tls.secretName
    result = cluster.kubectl(
        "apply", "-n", installed, "-f", "-", input=json.dumps(bad), check=False
    )
    assert result.returncode != 0
    assert "spec.tls" in result.stderr


def test_scaling_backends_changes_endpoints_and_drops_no_live_connection(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    url = lb_url(cluster, ns, HTTP_NODE_PORT)
    with open_ws(url) as held:
        first = whoami(held)
        before = echo_pods(cluster, ns)
        cluster.kubectl("scale", "deployment", ECHO, "-n", ns, "--replicas=3")
        cluster.rollout(ECHO, ns)
        added = echo_pods(cluster, ns) - before
        assert len(added) == 1
        # wlc sends new connections to the idle backends, so the new one shows up quickly.
        cluster.wait_for(
            lambda: reach(cluster, url) in added or None,
            timeout=60,
            what="the new backend in the endpoint set",
        )
        assert whoami(held) == first  # the live connection never noticed


def test_deleted_backend_pod_drains_its_connections_with_1001(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    url = lb_url(cluster, ns, HTTP_NODE_PORT)
    with open_ws(url) as held:
        victim = whoami(held)
        cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=false")

        def closed() -> bool | None:
            try:
                whoami(held)
            except ConnectionClosed:
                return True
            time.sleep(0.2)
            return None

        cluster.wait_for(closed, timeout=60, what="the drained connection to close")
        assert held.close_code == 1001
    cluster.rollout(ECHO, ns)


def test_https_listener_serves_the_secret_and_a_rotated_secret_keeps_old_connections(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    old_cert, old_key = self_signed(["127.0.0.1", "localhost"])
    running = data_planes(cluster, ns)
    cluster.apply(json.dumps(tls_secret("edge-tls", old_cert, old_key)), ns)
    cluster.apply(
        json.dumps(
            listener(
                "wss",
                protocol="HTTPS",
                port=8443,
                nodePort=HTTPS_NODE_PORT,
                tls={"secretName": "edge-tls"},
            )
        ),
        ns,
    )
    cluster.wait_for(lambda: programmed(cluster, ns, "wss") or None, what="wss Programmed")
    # A new Listener reaches the running data plane over the channel: no pod was replaced.
    assert data_planes(cluster, ns) == running
    url = lb_url(cluster, ns, HTTPS_NODE_PORT, scheme="wss")
    old_ctx = ssl.create_default_context(cadata=old_cert)
    reach(cluster, url, ssl=old_ctx)
    with open_ws(url, ssl=old_ctx) as held:
        name = whoami(held)
        new_cert, new_key = self_signed(["127.0.0.1", "localhost"])
        cluster.apply(json.dumps(tls_secret("edge-tls", new_cert, new_key)), ns)
        new_ctx = ssl.create_default_context(cadata=new_cert)
        reach(cluster, url, ssl=new_ctx)  # new connections get the rotated certificate
        with pytest.raises(ssl.SSLCertVerificationError):
            open_ws(url, ssl=old_ctx)
        assert whoami(held) == name  # the old connection is untouched


def test_controller_restart_pushes_no_empty_snapshot_and_drops_no_connection(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    url = lb_url(cluster, ns, HTTP_NODE_PORT)
    running = data_planes(cluster, ns)
    with open_ws(url) as held:
        name = whoami(held)
        cluster.kubectl(
            "delete",
            "pod",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/component=controller",
            "--wait=true",
        )
        cluster.rollout(f"{RELEASE}-controller", SYSTEM)
        cluster.wait_for(lambda: programmed(cluster, ns, "ws") or None, what="Programmed again")
        for _ in range(5):
            assert whoami(held) == name
        reach(cluster, url)
    assert data_planes(cluster, ns) == running
    logs = cluster.kubectl(
        "logs", "-n", ns, "-l", f"wslb.io/load-balancer={LB}", "--tail=-1"
    ).stdout
    assert "(0 listeners)" not in logs


def test_deleting_the_load_balancer_removes_its_data_plane(
    cluster: Cluster, installed: str
) -> None:
    ns = installed
    cluster.kubectl("delete", "loadbalancer", LB, "-n", ns)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "deployment", f"{LB}-wslb", "-n", ns, check=False).returncode
            != 0
            or None
        ),
        timeout=120,
        what="garbage collection of the data-plane Deployment",
    )
    assert cluster.kubectl("get", "service", f"{LB}-wslb", "-n", ns, check=False).returncode != 0


def test_helm_uninstall_leaves_only_the_crds(cluster: Cluster, installed: str) -> None:
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait")

    def ours_left() -> str:
        return cluster.kubectl(
            "get",
            "all,secrets,serviceaccounts,configmaps",
            "-n",
            SYSTEM,
            "-l",
            "app.kubernetes.io/instance=wslb",
            "-o",
            "name",
        ).stdout.strip()

    # Pods terminate after helm returns; wait for them rather than sleeping.
    cluster.wait_for(lambda: ours_left() == "" or None, timeout=120, what="nothing of ours left")
    cluster_wide = cluster.kubectl("get", "clusterroles,clusterrolebindings", "-o", "name").stdout
    assert "wslb" not in cluster_wide
    crds = cluster.kubectl("get", "crd", "-o", "name").stdout
    assert "loadbalancers.wslb.io" in crds and "listeners.wslb.io" in crds
