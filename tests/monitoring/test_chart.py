"""The chart's monitoring switches, rendered with `helm template` on a copy of the chart that
has this branch's values merged in: off by default, and what each one makes when on."""

from __future__ import annotations

import json
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.chart import CHART, helm, merged_chart, render
from tests.monitoring.known import DASHBOARD, RULES, promtool
from tests.unit.test_chart_crds import needs_helm

pytestmark = [pytest.mark.unit, needs_helm]

ALL_ON = (
    "--set",
    "metrics.serviceMonitor.enabled=true",
    "--set",
    "metrics.podMonitor.enabled=true",
    "--set",
    "prometheusRule.enabled=true",
    "--set",
    "dashboard.enabled=true",
)


@pytest.fixture(scope="module")
def chart() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="wslb-chart-") as tmp:
        yield merged_chart(Path(tmp))


def kinds(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def test_monitoring_objects_are_off_by_default(chart: Path) -> None:
    found = kinds(render(chart))
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} & set(found)
    # Only the controller's helm test pod: no LoadBalancer is named.
    (pod,) = found["Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_the_chart_without_the_new_values_still_renders() -> None:
    """Until values.yaml carries the new blocks, the new templates must not break the chart."""
    out = helm("template", "wslb", str(CHART), "-n", "wslb-system").stdout
    assert "kind: Deployment" in out


def test_service_monitor_scrapes_the_controller_metrics_port_as_wslb_controller(
    chart: Path,
) -> None:
    found = kinds(
        render(chart, *ALL_ON, "--set", "metrics.serviceMonitor.additionalLabels.release=kps")
    )
    (monitor,) = found["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["interval"] == "30s"
    assert {"action": "replace", "targetLabel": "job", "replacement": "wslb-controller"} in (
        endpoint["relabelings"]
    )
    services = {s["metadata"]["name"]: s for s in found["Service"]}
    selected = [
        name
        for name, service in services.items()
        if monitor["spec"]["selector"]["matchLabels"].items()
        <= service["metadata"]["labels"].items()
        and any(port["name"] == endpoint["port"] for port in service["spec"]["ports"])
    ]
    assert selected == ["wslb-metrics"]


def test_pod_monitor_scrapes_data_planes_with_job_and_load_balancer_labels(chart: Path) -> None:
    (monitor,) = kinds(render(chart, *ALL_ON))["PodMonitor"]
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "wslb-dataplane"}
    (endpoint,) = spec["podMetricsEndpoints"]
    assert endpoint["port"] == "admin"
    relabel = endpoint["relabelings"]
    assert relabel[0] == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "wslb-dataplane",
    }
    assert relabel[1]["sourceLabels"] == ["__meta_kubernetes_pod_label_wslb_io_load_balancer"]
    assert relabel[1]["targetLabel"] == "load_balancer"
    scoped = kinds(render(chart, *ALL_ON, "--set", "watchNamespaces={team-a,team-b}"))
    assert scoped["PodMonitor"][0]["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }


def test_prometheus_rule_carries_every_alert_with_runbook_base_and_stays_valid(
    chart: Path, tmp_path: Path
) -> None:
    source = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = kinds(
        render(
            chart,
            *ALL_ON,
            "--set",
            "prometheusRule.runbookBaseUrl=https://docs.example/wslb/",
            "--set",
            "prometheusRule.disabled={WslbIdleTimeoutSpike}",
            "--set",
            "prometheusRule.alertLabels.team=edge",
        )
    )["PrometheusRule"]
    groups = rule["spec"]["groups"]
    rendered = {r["alert"]: r for g in groups for r in g["rules"]}
    expected = {r["alert"]: r for g in source for r in g["rules"]}
    assert set(rendered) == set(expected) - {"WslbIdleTimeoutSpike"}
    for name, alert in rendered.items():
        original = expected[name]
        assert alert["expr"] == original["expr"]
        assert alert.get("for") == original.get("for")
        assert alert["labels"] == {**original["labels"], "team": "edge"}
        assert alert["annotations"]["runbook_url"] == (
            "https://docs.example/wslb/" + original["annotations"]["runbook_url"]
        )
        assert alert["annotations"]["description"] == original["annotations"]["description"]
    # What the operator loads is still a valid rule file for Prometheus.
    path = tmp_path / "rendered-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_config_map_has_the_sidecar_label_and_the_generated_json(chart: Path) -> None:
    (config_map,) = kinds(render(chart, *ALL_ON))["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["wslb.json"]) == json.loads(DASHBOARD.read_text())


def test_helm_test_pods_reach_the_controller_and_a_load_balancer(chart: Path) -> None:
    pods = {
        p["metadata"]["name"]: p
        for p in kinds(
            render(
                chart,
                "--set",
                "tests.loadBalancer.name=chat",
                "--set",
                "tests.loadBalancer.namespace=apps",
                "--set",
                "tests.loadBalancer.path=/ws",
            )
        )["Pod"]
    }
    assert set(pods) == {"wslb-test-controller", "wslb-test-dataplane"}
    for pod in pods.values():
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
        spec = pod["spec"]
        assert spec["restartPolicy"] == "Never"
        assert spec["securityContext"]["runAsNonRoot"] is True
        (container,) = spec["containers"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    controller = pods["wslb-test-controller"]["spec"]["containers"][0]["command"]
    assert controller[-1] == "http://wslb-metrics.wslb-system.svc:8080/readyz"
    dataplane = pods["wslb-test-dataplane"]["spec"]["containers"][0]["command"]
    assert dataplane[-1] == "ws://chat-wslb.apps.svc:80/ws"


def test_helm_test_scripts_are_valid_python(chart: Path) -> None:
    pods = kinds(render(chart, "--set", "tests.loadBalancer.name=chat"))["Pod"]
    for pod in pods:
        command = pod["spec"]["containers"][0]["command"]
        assert command[:2] == ["python", "-c"]
        compile(command[2], pod["metadata"]["name"], "exec")


@pytest.mark.parametrize(
    "bad",
    [
        "logFormat=yaml",
        "prometheusRule.enabled=yes",
        "metrics.podMonitor.interval=soon",
        "prometheusRule.disabled={NotAnAlert}",
        "dashboard.colour=red",
    ],
)
def test_the_schema_refuses_bad_values(chart: Path, bad: str) -> None:
    result = helm("template", "wslb", str(chart), "--set", bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_helm_lint_strict_passes_with_everything_on(chart: Path) -> None:
    result = helm("lint", "--strict", str(chart), *ALL_ON, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
