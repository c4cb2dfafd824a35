"""Debian's Prometheus scrapes a kind cluster's controller and data plane, installed by the
chart, through NodePorts mapped to 127.0.0.1, with the chart's alert rules loaded.

While the test holds known traffic (two tunnels at a listener limit of two, messages both
ways, refused third connections), every rule evaluates without error, every dashboard query
and every alert's metric whose series exist returns data, the controller's own series keep
their LoadBalancer's `namespace` (honor_labels, as the chart's ServiceMonitor), and
WslbNewConnectionsRefused fires and shows in /api/v1/alerts. The rules are loaded with their
`for:` removed so the alert fires within seconds; the durations are promtool's to test
(monitoring/alerts.test.yaml). `helm test` passes against the release, and the controller
logs JSON (logFormat=json).
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.e2e.kind_cluster import REPO, Cluster
from tests.e2e.manifests import dump, echo_deployment
from tests.e2e.product import entry_url
from tests.monitoring import prometheus as prometheus_server
from tests.monitoring.known import RULES, metric_names_in
from tests.monitoring.prometheus import Prometheus
from tests.monitoring.test_dashboard import expressions

pytestmark = pytest.mark.e2e

if not prometheus_server.available():
    pytest.skip(prometheus_server.MISSING, allow_module_level=True)

RELEASE = "wslb-mon"
LB = "mon"
ECHO = "echo"
LISTENER = "ws"
LISTENER_PORT = 8080
MAX_CONNECTIONS = 2
LISTENER_NODE_PORT = 30085
CONTROLLER_METRICS_NODE_PORT = 30086
DATAPLANE_METRICS_NODE_PORT = 30087
REFUSALS = 3

# Series every scrape of this stack must show, whatever else the data plane wires up.
REQUIRED = {
    "up",
    "wslb_build_info",
    "wslb_controller_leader",
    "wslb_controller_acks_total",
    "wslb_controller_nacks_total",
    "wslb_controller_data_planes_connected",
    "wslb_controller_listener_programmed",
    "wslb_dataplane_ready",
    "wslb_dataplane_connections_active",
    "wslb_dataplane_upgrades_total",
    "wslb_dataplane_rejections_total",
    "wslb_dataplane_messages_total",
    "wslb_dataplane_bytes_total",
    "wslb_dataplane_backend_healthy",
    "wslb_dataplane_config_info",
}
TEXT_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d[T ][0-9:.,+]+ (DEBUG|INFO|WARNING|ERROR) ")


def image_values(cluster: Cluster) -> list[str]:
    repository, _, tag = cluster.image.rpartition(":")
    return ["--set", f"image.repository={repository}", "--set", f"image.tag={tag}"]


def objects(namespace: str) -> list[dict[str, Any]]:
    """The LoadBalancer, its Listener (limit two connections), the echo Service, and two
    NodePort Services that map the metrics ports to the host for Prometheus."""

    def node_port_service(name: str, selector: dict[str, str], target: Any, node_port: int) -> Any:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {
                "type": "NodePort",
                "selector": selector,
                "ports": [{"port": 80, "targetPort": target, "nodePort": node_port}],
            },
        }

    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": ECHO},
            "spec": {"selector": {"app": ECHO}, "ports": [{"name": "ws", "port": 8080}]},
        },
        {
            "apiVersion": "wslb.io/v1alpha1",
            "kind": "LoadBalancer",
            "metadata": {"name": LB},
            "spec": {"tier": "slb.s1.small", "replicas": 1, "service": {"type": "NodePort"}},
        },
        {
            "apiVersion": "wslb.io/v1alpha1",
            "kind": "Listener",
            "metadata": {"name": LISTENER},
            "spec": {
                "loadBalancerRef": {"name": LB},
                "protocol": "HTTP",
                "port": LISTENER_PORT,
                "nodePort": LISTENER_NODE_PORT,
                "backends": [{"serviceName": ECHO, "port": 8080}],
                "limits": {"maxConnections": MAX_CONNECTIONS},
                "drainTimeoutSeconds": 3,
            },
        },
        node_port_service(
            "mon-controller-metrics",
            {
                "app.kubernetes.io/instance": RELEASE,
                "app.kubernetes.io/component": "controller",
            },
            8080,
            CONTROLLER_METRICS_NODE_PORT,
        ),
        # By the port's name: the data-plane pods must name it `metrics`.
        node_port_service(
            "mon-dataplane-metrics",
            {"app.kubernetes.io/name": "wslb-dataplane", "wslb.io/load-balancer": LB},
            "metrics",
            DATAPLANE_METRICS_NODE_PORT,
        ),
    ]


def programmed(cluster: Cluster, namespace: str) -> bool:
    obj = cluster.get("listener", LISTENER, "-n", namespace)
    for item in obj.get("status", {}).get("conditions", []) or []:
        if item.get("type") == "Programmed":
            return bool(item["status"] == "True")
    return False


@pytest.fixture(scope="module")
def stack(cluster: Cluster, namespace: str) -> Iterator[str]:
    """The chart (watching only this namespace), echo backend, LoadBalancer and Listener."""
    crds_present = (
        cluster.kubectl("get", "crd", "loadbalancers.wslb.io", check=False).returncode == 0
    )
    cluster.helm(
        "install",
        RELEASE,
        str(REPO / "helm" / "wslb"),
        "-n",
        namespace,
        "--set",
        f"watchNamespaces={{{namespace}}}",
        "--set",
        "controller.replicas=1",
        "--set",
        "logFormat=json",
        # Another release may own the CRDs already (they are kept on uninstall).
        "--set",
        f"crds.enabled={str(not crds_present).lower()}",
        "--set",
        f"tests.loadBalancer.name={LB}",
        "--set",
        f"tests.loadBalancer.port={LISTENER_PORT}",
        *image_values(cluster),
        "--wait",
        "--timeout",
        "180s",
    )
    try:
        cluster.apply(dump(echo_deployment(ECHO, replicas=1), *objects(namespace)), namespace)
        cluster.rollout(ECHO, namespace)
        cluster.wait_for(
            lambda: (
                cluster.kubectl(
                    "get", "deployment", f"{LB}-wslb", "-n", namespace, check=False
                ).returncode
                == 0
                or None
            ),
            what="the data-plane Deployment",
        )
        cluster.rollout(f"{LB}-wslb", namespace)
        cluster.wait_for(lambda: programmed(cluster, namespace) or None, what="Listener Programmed")
        yield namespace
    finally:
        # The ClusterRole is cluster-scoped: the namespace's deletion would not remove it.
        cluster.helm("uninstall", RELEASE, "-n", namespace, "--wait", "--timeout", "120s")


def pod_name(cluster: Cluster, namespace: str, selector: str) -> str:
    (pod,) = cluster.ready_pods(namespace, selector)
    return str(pod["metadata"]["name"])


def test_helm_test_passes_against_the_release(cluster: Cluster, stack: str) -> None:
    """Both hook pods (the controller's /readyz, an upgrade through the LoadBalancer's data
    plane) succeed; helm exits non-zero otherwise. They are deleted on success, so their
    logs are not read here (tests/monitoring/test_helm_test_pods.py runs the scripts)."""
    result = cluster.helm("test", RELEASE, "-n", stack, "--timeout", "180s")
    suites = re.findall(r"TEST SUITE:\s+(\S+)\n(?:.*\n)*?Phase:\s+(\S+)", result.stdout)
    assert sorted(suites) == [
        (f"{RELEASE}-test-controller", "Succeeded"),
        (f"{RELEASE}-test-dataplane", "Succeeded"),
    ], result.stdout


def test_the_controller_logs_json(cluster: Cluster, stack: str) -> None:
    logs = cluster.kubectl(
        "logs", "-n", stack, "-l", "app.kubernetes.io/component=controller", "--tail=-1"
    ).stdout.splitlines()
    records = []
    for line in logs:
        assert not TEXT_LOG_LINE.match(line), f"a text log line with logFormat=json: {line}"
        if line.startswith("{"):
            records.append(json.loads(line))
    assert records, logs[:20]
    assert {"time", "level", "logger", "message"} <= set(records[0]), records[0]
    assert any(r["logger"] == "wslb.controller" for r in records), records[:5]


def test_data_plane_pods_name_the_metrics_port_and_carry_scrape_annotations(
    cluster: Cluster, stack: str
) -> None:
    (pod,) = cluster.ready_pods(stack, f"wslb.io/load-balancer={LB}")
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9901"
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = pod["spec"]["containers"][0]["ports"]
    assert [(p["name"], p["containerPort"]) for p in ports] == [("metrics", 9901)]


@pytest.fixture
def prometheus(cluster: Cluster, stack: str) -> Iterator[Prometheus]:
    controller_pod = pod_name(cluster, stack, "app.kubernetes.io/component=controller")
    data_plane_pod = pod_name(cluster, stack, f"wslb.io/load-balancer={LB}")
    scrape = [
        {
            # As the chart's ServiceMonitor: the LoadBalancer's `namespace` label on the
            # controller's series wins over the target's.
            "job_name": "wslb-controller",
            "honor_labels": True,
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{cluster.host_port(CONTROLLER_METRICS_NODE_PORT)}"],
                    "labels": {"namespace": stack, "pod": controller_pod},
                }
            ],
        },
        {
            # As the chart's PodMonitor.
            "job_name": "wslb-dataplane",
            "static_configs": [
                {
                    "targets": [f"127.0.0.1:{cluster.host_port(DATAPLANE_METRICS_NODE_PORT)}"],
                    "labels": {"namespace": stack, "load_balancer": LB, "pod": data_plane_pod},
                }
            ],
        },
    ]
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    server = prometheus_server.start(scrape, rules)
    try:
        yield server
    finally:
        server.stop()


def refused(url: str) -> int:
    """The status of a WebSocket upgrade that must be refused."""
    with pytest.raises(InvalidStatus) as refusal:
        connect(url, open_timeout=10, close_timeout=5).close()
    return int(refusal.value.response.status_code)


def test_prometheus_scrapes_the_stack_and_the_refusal_alert_fires(
    cluster: Cluster, stack: str, prometheus: Prometheus
) -> None:
    prom = prometheus
    # The data-plane Service keeps client addresses (externalTrafficPolicy Local): only a node
    # that runs the data plane answers on its NodePort.
    url = entry_url(cluster, stack, LB, LISTENER_NODE_PORT)

    def targets_up() -> bool:
        up = {r["metric"]["job"]: r["value"][1] for r in prom.query("up")}
        return up == {"wslb-controller": "1", "wslb-dataplane": "1"}

    prom.poll(targets_up, "both targets up", timeout=60)
    with contextlib.ExitStack() as held:
        tunnels: list[ClientConnection] = []
        for _ in range(MAX_CONNECTIONS):
            tunnels.append(held.enter_context(connect(url, open_timeout=10, close_timeout=5)))
        for n, ws in enumerate(tunnels):
            for i in range(3):
                ws.send(f"m{n}.{i}")
                assert ws.recv(timeout=10) == f"m{n}.{i}"
        # At the limit: refusals, each seen by a scrape before the next, so rate() > 0.
        for count in range(1, REFUSALS + 1):
            assert refused(url) == 503

            def scraped(count: int = count) -> bool:
                promql = (
                    f'sum(wslb_dataplane_rejections_total{{reason="listener_connections"}})'
                    f" == {count}"
                )
                return bool(prom.query(promql))

            prom.poll(scraped, f"refusal {count} scraped")

        def refusal_firing() -> dict[str, Any] | None:
            for alert in prom.alerts():
                if alert["labels"]["alertname"] == "WslbNewConnectionsRefused":
                    return alert if alert["state"] == "firing" else None
            return None

        alert = prom.poll(refusal_firing, "WslbNewConnectionsRefused firing")
        assert alert["labels"] == {
            "alertname": "WslbNewConnectionsRefused",
            "severity": "warning",
            "namespace": stack,
            "load_balancer": LB,
            "listener": LISTENER,
            "reason": "listener_connections",
        }
        assert alert["annotations"]["description"].startswith(
            f"Listener {LISTENER} of {stack}/{LB} answered 503 (listener_connections)"
        )

        def rules_evaluated() -> list[dict[str, Any]] | None:
            rules = prom.rules()
            done = rules and all(r["lastEvaluation"][:4] != "0001" for r in rules)
            return rules if done else None

        rules = prom.poll(rules_evaluated, "every rule evaluated")
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []

        # The held tunnels fill the listener's limit, so the near-limit alert fires too (the
        # data plane exports each limit in force as a gauge).
        def near_limit_firing() -> dict[str, Any] | None:
            for alert in prom.alerts():
                if alert["labels"]["alertname"] == "WslbConnectionsNearListenerLimit":
                    return alert if alert["state"] == "firing" else None
            return None

        near = prom.poll(near_limit_firing, "WslbConnectionsNearListenerLimit firing")
        assert near["labels"] == {
            "alertname": "WslbConnectionsNearListenerLimit",
            "severity": "warning",
            "namespace": stack,
            "load_balancer": LB,
            "listener": LISTENER,
        }
        firing = {a["labels"]["alertname"] for a in prom.alerts() if a["state"] == "firing"}
        # Healthy otherwise: up, ready, programmed, connected, backends healthy.
        assert firing == {"WslbNewConnectionsRefused", "WslbConnectionsNearListenerLimit"}, firing

        programmed_series = prom.query("wslb_controller_listener_programmed")
        assert [r["metric"] for r in programmed_series] == [
            {
                "__name__": "wslb_controller_listener_programmed",
                "job": "wslb-controller",
                "instance": f"127.0.0.1:{cluster.host_port(CONTROLLER_METRICS_NODE_PORT)}",
                "pod": pod_name(cluster, stack, "app.kubernetes.io/component=controller"),
                "namespace": stack,
                "load_balancer": LB,
                "listener": LISTENER,
                "reason": "Programmed",
            }
        ]
        assert programmed_series[0]["value"][1] == "1"

        present = {r["metric"]["__name__"] for r in prom.query('{job=~"wslb-.*"}')} | {"up"}
        assert present >= REQUIRED, REQUIRED - present
        assert not {n for n in present if n.startswith("wslb_controller_") and "_created" in n}

        # Every alert metric and every dashboard query over series that exist returns data
        # while the tunnels are held.
        empty_alert_metrics = []
        for rule in rules:
            for name in sorted(metric_names_in(rule["query"]) & present):
                if not prom.query(f'{name}{{job=~"wslb-.*"}}'):
                    empty_alert_metrics.append((rule["name"], name))
        assert empty_alert_metrics == []
        answered, silent = [], []
        for title, expr in expressions().items():
            names = metric_names_in(expr)
            if names <= present:
                (answered if prom.query(expr) else silent).append(title)
        assert silent == []
        assert len(answered) >= 12, answered
        print(
            f"dashboard queries answered: {len(answered)}; over absent series: "
            f"{len(expressions()) - len(answered)}; series present: {sorted(present)}"
        )
