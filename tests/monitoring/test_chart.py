"""The chart's monitoring switches, rendered with `helm template`: off by default, and what
each one makes when on."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import owned
from controller.models import parse
from tests.monitoring.chart import CHART, helm, render
from tests.monitoring.known import DASHBOARD, RULES, promtool
from tests.unit import kubeobjects as k
from tests.unit.test_chart_crds import needs_helm

pytestmark = [pytest.mark.unit, needs_helm]

PARAMS = owned.DataPlaneParams(image="wslb:test", config_url="wss://wslb-config:9443")


def load_balancer() -> Any:
    return parse(k.KINDS["LoadBalancer"], k.load_balancer())


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


def kinds(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for doc in documents:
        out.setdefault(doc["kind"], []).append(doc)
    return out


def test_monitoring_objects_are_off_by_default() -> None:
    found = kinds(render())
    assert not {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} & set(found)
    # Only the controller's helm test pod: no LoadBalancer is named.
    (pod,) = found["Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


def test_service_monitor_scrapes_the_controller_metrics_port_as_wslb_controller() -> None:
    found = kinds(render(*ALL_ON, "--set", "metrics.serviceMonitor.additionalLabels.release=kps"))
    (monitor,) = found["ServiceMonitor"]
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["interval"] == "30s"
    assert endpoint["honorLabels"] is True  # the LoadBalancer's `namespace`
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


def test_pod_monitor_scrapes_data_planes_with_job_and_load_balancer_labels() -> None:
    (monitor,) = kinds(render(*ALL_ON))["PodMonitor"]
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"any": True}
    assert spec["selector"]["matchLabels"] == {"app.kubernetes.io/name": "wslb-dataplane"}
    (endpoint,) = spec["podMetricsEndpoints"]
    # The port the controller names on every data-plane pod (controller/owned.py).
    assert endpoint["port"] == owned.METRICS_PORT_NAME == "metrics"
    pod = owned.deployment(load_balancer(), [], 0, PARAMS)["spec"]["template"]["spec"]
    assert endpoint["port"] in [port["name"] for port in pod["containers"][0]["ports"]]
    relabel = endpoint["relabelings"]
    assert relabel[0] == {
        "action": "replace",
        "targetLabel": "job",
        "replacement": "wslb-dataplane",
    }
    assert relabel[1]["sourceLabels"] == ["__meta_kubernetes_pod_label_wslb_io_load_balancer"]
    assert relabel[1]["targetLabel"] == "load_balancer"
    scoped = kinds(render(*ALL_ON, "--set", "watchNamespaces={team-a,team-b}"))
    assert scoped["PodMonitor"][0]["spec"]["namespaceSelector"] == {
        "matchNames": ["team-a", "team-b"]
    }


def test_prometheus_rule_carries_every_alert_with_runbook_base_and_stays_valid(
    tmp_path: Path,
) -> None:
    source = yaml.safe_load(RULES.read_text())["groups"]
    (rule,) = kinds(
        render(
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


def test_dashboard_config_map_has_the_sidecar_label_and_the_generated_json() -> None:
    (config_map,) = kinds(render(*ALL_ON))["ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["wslb.json"]) == json.loads(DASHBOARD.read_text())


def test_helm_test_pods_reach_the_controller_and_a_load_balancer() -> None:
    pods = {
        p["metadata"]["name"]: p
        for p in kinds(
            render(
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


def test_helm_test_scripts_are_valid_python() -> None:
    pods = kinds(render("--set", "tests.loadBalancer.name=chat"))["Pod"]
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
        "metrics.scrapeAnnotations=maybe",
        "metrics.serviceMonitor.port=admin",
    ],
)
def test_the_schema_refuses_bad_values(bad: str) -> None:
    result = helm("template", "wslb", str(CHART), "--set", bad, check=False)
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr


def test_helm_lint_strict_passes_with_everything_on() -> None:
    result = helm("lint", "--strict", str(CHART), *ALL_ON, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def controller_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = kinds(documents)["Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_log_format_reaches_the_controller_environment() -> None:
    default = {e["name"]: e.get("value") for e in controller_container(render())["env"]}
    assert default["WSLB_LOG_FORMAT"] == "text"
    json_env = controller_container(render("--set", "logFormat=json"))["env"]
    assert {"name": "WSLB_LOG_FORMAT", "value": "json"} in json_env


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_scrape_annotations_are_on_by_default_and_off_under_the_operator() -> None:
    """Without the Prometheus Operator both the controller pods and (through the controller)
    the data-plane pods carry prometheus.io annotations; a ServiceMonitor or PodMonitor
    turns off the ones it replaces, so nothing is scraped twice."""
    (deployment,) = kinds(render())["Deployment"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert env_of(controller_container(render()))["WSLB_SCRAPE_ANNOTATIONS"] == "true"
    (deployment,) = kinds(render(*ALL_ON, "--set", "controller.podAnnotations.team=edge"))[
        "Deployment"
    ]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert not any(key.startswith("prometheus.io/") for key in annotations)
    assert annotations["team"] == "edge"
    assert env_of(controller_container(render(*ALL_ON)))["WSLB_SCRAPE_ANNOTATIONS"] == "false"
    off = render("--set", "metrics.scrapeAnnotations=false")
    assert env_of(controller_container(off))["WSLB_SCRAPE_ANNOTATIONS"] == "false"
