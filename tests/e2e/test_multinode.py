"""What only several nodes show: a LoadBalancer's data planes spread across the workers, a
PDB-protected node drain and a SIGKILLed data plane that clients live through, the replica
count driven by `kubectl scale` and an HPA, the chart's `imagePullSecrets` on the data-plane
pods, and `helm upgrade` applying a changed CRD.

The echo backends run with `--hold-on-sigterm`: they never close a connection by themselves
when stopped, so a client that sees 1001 saw the load balancer drain it; a load balancer that
does not drain leaves the backend to be SIGKILLed and its clients cut. The tests run in file
order on one install (a module fixture): spread is checked first, then the disruptions.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import product
from tests.e2e.clients import Client, describe, gaps, start_clients, stop_clients
from tests.e2e.kind_cluster import Cluster
from tests.e2e.manifests import dump, echo_deployment, service
from tests.e2e.product import LB_LABEL, RELEASE, SYSTEM, entry_urls, programmed

pytestmark = pytest.mark.e2e

LB = "ha"
ECHO = "held"
NODE_PORT = 30083
CLIENTS = 6
#: Seconds a client may be without a connection after a close (the data plane's drain and
#: preStop take 3 s each; a reconnect through a node without a data plane costs a 3 s try).
MAX_GAP = 15.0
#: Grace period of the held echo backends: past it the kubelet SIGKILLs them, cutting their
#: connections (what a non-draining load balancer leaves its clients with).
ECHO_GRACE = 30


def figure(request: pytest.FixtureRequest, text: str) -> None:
    """A measured figure, in the test log even when the test passes."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    line = f"[figure] {request.node.name}: {text}"
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def spread_echo(name: str) -> dict[str, Any]:
    """Held echo backends, one per schedulable worker (cordoned nodes are not counted)."""
    manifest = echo_deployment(name, replicas=2, hold_on_sigterm=True, grace_seconds=ECHO_GRACE)
    manifest["spec"]["template"]["spec"]["topologySpreadConstraints"] = [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "nodeTaintsPolicy": "Honor",
            "labelSelector": {"matchLabels": {"app": name}},
        }
    ]
    return manifest


def deployment(cluster: Cluster, namespace: str) -> dict[str, Any]:
    result: dict[str, Any] = cluster.get("deployment", f"{LB}-wslb", "-n", namespace)
    return result


def two_planes_on_two_nodes(cluster: Cluster, namespace: str) -> dict[str, str] | None:
    nodes = product.data_plane_nodes(cluster, namespace, LB)
    return nodes if len(nodes) == 2 and len(set(nodes.values())) == 2 else None


@pytest.fixture(scope="module")
def lb(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart installed; held echo backends on both workers; a LoadBalancer with two data
    planes and a Listener on NodePort 30083. Yields the namespace."""
    product.install(cluster)
    ns = namespace
    cluster.apply(dump(spread_echo(ECHO), service(ECHO)), ns)
    cluster.apply(
        dump(
            product.load_balancer(LB, replicas=2),
            product.listener("ws", LB, ECHO, nodePort=NODE_PORT),
        ),
        ns,
    )
    cluster.rollout(ECHO, ns)
    cluster.wait_for(
        lambda: (
            cluster.kubectl("get", "deployment", f"{LB}-wslb", "-n", ns, check=False).returncode
            == 0
        ),
        what="the data-plane Deployment",
    )
    cluster.rollout(f"{LB}-wslb", ns, timeout=180)
    cluster.wait_for(lambda: programmed(cluster, ns, "ws"), what="Listener Programmed")
    yield ns
    cluster.kubectl("delete", "loadbalancer", LB, "-n", ns, "--wait=false", check=False)
    cluster.helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", timeout=300)


def history(clients: list[Client]) -> str:
    return "; ".join(f"{c.name}: {c.connections} {c.errors}" for c in clients)


def clients_for(cluster: Cluster, namespace: str, prefix: str) -> list[Client]:
    """CLIENTS clients entering through every node that runs a data plane; the node a client
    enters names its data plane (externalTrafficPolicy Local, checked here)."""
    policy = cluster.get("service", f"{LB}-wslb", "-n", namespace)["spec"]
    assert policy.get("externalTrafficPolicy") == "Local", policy
    entries = cluster.wait_for(
        lambda: (urls := entry_urls(cluster, namespace, LB, NODE_PORT)) and len(urls) == 2 and urls,
        what="two nodes with a ready data plane",
    )
    # A ready pod is not yet a working entry: the node's kube-proxy programs its Local
    # endpoint a moment later. Without this wait every client may enter through one node.
    for url in entries.values():
        product.reach(cluster, url)
    return start_clients(CLIENTS, entries, prefix)


def test_data_planes_are_spread_across_nodes(cluster: Cluster, lb: str) -> None:
    nodes = cluster.wait_for(
        lambda: two_planes_on_two_nodes(cluster, lb), what="two data planes on two nodes"
    )
    assert set(nodes.values()) <= set(cluster.workers())
    # Not luck of the scheduler: the pod template asks for it.
    spread = deployment(cluster, lb)["spec"]["template"]["spec"].get(
        "topologySpreadConstraints", []
    )
    assert any(c["topologyKey"] == "kubernetes.io/hostname" for c in spread), spread


def test_sigkill_of_a_data_plane_moves_its_clients_to_the_other(
    cluster: Cluster, lb: str, request: pytest.FixtureRequest
) -> None:
    if cluster.kind != "kind":
        pytest.skip("SIGKILL of a data plane needs exec on a kind node")
    ns = lb
    planes = cluster.wait_for(lambda: two_planes_on_two_nodes(cluster, ns), what="two planes")
    clients = clients_for(cluster, ns, "kill")
    try:
        victim, node = sorted(planes.items())[0]
        survivor_node = next(n for n in planes.values() if n != node)
        on_victim = [c for c in clients if c.connections[0].entry == node]
        on_survivor = [c for c in clients if c.connections[0].entry == survivor_node]
        assert on_victim and on_survivor, [c.connections[0] for c in clients]
        before = cluster.get("pod", victim, "-n", ns)["status"]["containerStatuses"][0]
        killed_at = time.monotonic()
        pid = cluster.node_exec(
            node,
            "sh",
            "-c",
            "cid=$(crictl ps -q --name '^dataplane$' "
            f"--label io.kubernetes.pod.name={victim} --label io.kubernetes.pod.namespace={ns})"
            " && pid=$(crictl inspect -o go-template --template '{{.info.pid}}' \"$cid\")"
            ' && kill -KILL "$pid" && echo "$pid"',
        ).strip()
        assert pid.isdigit(), pid

        def moved() -> bool:
            return all(
                c.current is not None and c.current.entry == survivor_node for c in on_victim
            )

        try:
            cluster.wait_for(moved, timeout=60, interval=0.1, what="the victim's clients to move")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}: {history(on_victim)}") from None
        moved_in = time.monotonic() - killed_at
        # The container was SIGKILLed (exit 137) and restarted in place.
        after = cluster.wait_for(
            lambda: (
                (s := cluster.get("pod", victim, "-n", ns)["status"]["containerStatuses"][0])[
                    "restartCount"
                ]
                > before["restartCount"]
                and s
            ),
            what=f"{victim} to restart",
        )
        assert after["lastState"]["terminated"]["exitCode"] == 137
    finally:
        stop_clients(clients)
    for client in on_victim:
        assert len(client.closes()) >= 1
        assert all(c.gap_seconds is None or c.gap_seconds < MAX_GAP for c in client.connections)
    for client in on_survivor:
        assert client.closes() == [], client.connections  # the other data plane's clients stay
    for client in clients:
        assert client.errors == []
    figure(
        request,
        f"SIGKILL of {victim}: {len(on_victim)} of {CLIENTS} clients reconnected to the other "
        f"data plane, all within {moved_in:.2f}s; {describe(gaps(on_victim))}",
    )
    cluster.wait_for(lambda: two_planes_on_two_nodes(cluster, ns), what="both planes ready again")


def test_pdb_protected_drain_keeps_clients_or_hands_them_over_with_1001(
    cluster: Cluster, lb: str, request: pytest.FixtureRequest
) -> None:
    ns = lb
    planes = cluster.wait_for(lambda: two_planes_on_two_nodes(cluster, ns), what="two planes")
    budgets = [
        b
        for b in cluster.get("pdb", "-n", ns)["items"]
        if b["spec"].get("selector", {}).get("matchLabels", {}).get(LB_LABEL) == LB
    ]
    assert len(budgets) == 1, "no PodDisruptionBudget selects the data planes"
    cluster.wait_for(
        lambda: (
            cluster.get("pdb", budgets[0]["metadata"]["name"], "-n", ns)["status"].get(
                "disruptionsAllowed"
            )
            == 1
        ),
        what="the PDB to allow exactly one disruption",
    )
    victim, node = sorted(planes.items())[0]
    survivor_node = next(n for n in planes.values() if n != node)
    clients = clients_for(cluster, ns, "drain")
    assert any(c.connections[0].entry == node for c in clients), "no client on the victim"
    started = time.monotonic()
    try:
        cluster.kubectl(
            "drain",
            node,
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=150s",
            timeout=180,
        )
        drained_in = time.monotonic() - started
        cluster.wait_for(
            lambda: all(c.connected for c in clients), timeout=MAX_GAP, what="every client back"
        )
    finally:
        stop_clients(clients)
        cluster.kubectl("uncordon", node, check=False)
    assert victim not in product.data_plane_nodes(cluster, ns, LB)  # it was evicted
    closes = [c for client in clients for c in client.closes()]
    codes = sorted({c.close_code for c in closes if c.close_code is not None})
    assert all(c.close_code == 1001 for c in closes), [
        (c.entry, c.close_code, c.close_reason) for c in closes
    ]
    # The evicted data plane's clients were drained over to the other one.
    for client in clients:
        if client.connections[0].entry == node:
            assert client.closes(), client.name
            assert client.current is not None
            assert client.current.entry == survivor_node
        assert all(c.gap_seconds is None or c.gap_seconds < MAX_GAP for c in client.connections)
        assert client.errors == []
    figure(
        request,
        f"drain of {node} took {drained_in:.1f}s; {len(closes)} closes with codes {codes}; "
        f"{describe(gaps(clients))}",
    )


def test_kubectl_scale_and_an_hpa_change_the_replica_count(cluster: Cluster, lb: str) -> None:
    ns = lb

    def replicas(expected: int) -> bool:
        spec = cluster.get("loadbalancer", LB, "-n", ns)["spec"]["replicas"]
        ready = product.data_plane_nodes(cluster, ns, LB)
        return bool(spec == expected and len(ready) == expected)

    cluster.kubectl("scale", "loadbalancer", LB, "-n", ns, "--replicas=3")
    cluster.wait_for(lambda: replicas(3), timeout=180, what="3 data planes after kubectl scale")
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/wslb.io/v1alpha1/namespaces/{ns}/loadbalancers/{LB}/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 3
    # An HPA bounded to 2 scales the LoadBalancer down through the scale subresource (the
    # bounds apply before any metric is read, so no metrics server is needed).
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": LB},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "wslb.io/v1alpha1",
                "kind": "LoadBalancer",
                "name": LB,
            },
            "minReplicas": 2,
            "maxReplicas": 2,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 80},
                    },
                }
            ],
        },
    }
    cluster.apply(json.dumps(hpa), ns)
    try:
        cluster.wait_for(lambda: replicas(2), timeout=180, what="2 data planes set by the HPA")
    finally:
        cluster.kubectl("delete", "hpa", LB, "-n", ns, check=False)


def test_image_pull_secrets_value_reaches_the_data_plane_pods(cluster: Cluster, lb: str) -> None:
    """The chart's `imagePullSecrets` names a registry Secret in the release namespace; the
    data-plane pods, in the LoadBalancer's namespace, must pull with those credentials (a
    pod can only name Secrets of its own namespace, so the controller passes a copy)."""
    ns = lb
    registry, user = "registry.example.invalid", f"e2e-{secrets.token_hex(3)}"
    cluster.kubectl(
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "-n",
        SYSTEM,
        f"--docker-server={registry}",
        f"--docker-username={user}",
        "--docker-password=not-a-real-password",
    )
    cluster.helm(
        "upgrade",
        RELEASE,
        str(product.CHART),
        "-n",
        SYSTEM,
        "--reuse-values",
        "--set",
        "imagePullSecrets[0].name=regcred",
        "--wait",
        "--timeout",
        "180s",
    )

    def credentials(name: str) -> dict[str, Any]:
        secret = cluster.get("secret", name, "-n", ns)
        assert secret["type"] == "kubernetes.io/dockerconfigjson", secret["type"]
        config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
        auths: dict[str, Any] = config["auths"]
        return auths

    def pods_pull_with_it() -> bool:
        pods = cluster.get("pods", "-n", ns, "-l", f"{LB_LABEL}={LB}")["items"]
        ready = product.data_plane_nodes(cluster, ns, LB)
        if not pods or len(ready) != len(pods):
            return False
        for pod in pods:
            names = [ref["name"] for ref in pod["spec"].get("imagePullSecrets", [])]
            if not any(credentials(n).get(registry, {}).get("username") == user for n in names):
                return False
        return True

    cluster.wait_for(
        pods_pull_with_it, timeout=180, what=f"data-plane pods pulling with {user}@{registry}"
    )


def crd_with_new_field(chart: Path) -> Path:
    """Add an optional string field `e2eUpgradeProbe` to the LoadBalancer CRD wherever the
    chart keeps it (beside spec.replicas, same indentation); return the file changed."""
    for path in sorted(chart.rglob("*.yaml")):
        text = path.read_text()
        if "name: loadbalancers.wslb.io" not in text:
            continue
        found = re.search(r"^(\s+)replicas:\n\1  type: integer", text, re.MULTILINE)
        assert found, f"no spec.replicas property in {path}"
        indent = found.group(1)
        field = (
            f"{indent}e2eUpgradeProbe:\n{indent}  type: string\n"
            f"{indent}  description: added by the e2e helm upgrade test\n"
        )
        path.write_text(text[: found.start()] + field + text[found.start() :])
        return path
    raise AssertionError(f"the chart {chart} holds no LoadBalancer CRD")


def test_helm_upgrade_applies_a_changed_crd_field(
    cluster: Cluster, lb: str, tmp_path: Path
) -> None:
    chart = tmp_path / "wslb"
    shutil.copytree(product.CHART, chart)
    crd_with_new_field(chart)

    def served_fields() -> dict[str, Any]:
        crd = cluster.get("crd", "loadbalancers.wslb.io")
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        fields: dict[str, Any] = schema["properties"]["spec"]["properties"]
        return fields

    assert "e2eUpgradeProbe" not in served_fields()
    cluster.helm(
        "upgrade",
        RELEASE,
        str(chart),
        "-n",
        SYSTEM,
        "--reuse-values",
        "--wait",
        "--timeout",
        "180s",
    )
    assert served_fields()["e2eUpgradeProbe"]["type"] == "string"
    # The API server takes the new field (strict field validation would refuse an unknown one).
    probe = product.load_balancer("upgrade-probe", replicas=1, e2eUpgradeProbe="x")
    result = cluster.kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        lb,
        "-f",
        "-",
        input=json.dumps(probe),
        check=False,
    )
    assert result.returncode == 0, result.stderr
