"""The owned objects of a LoadBalancer, as manifests."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from controller import owned
from controller.builder import ServicePortSpec
from controller.models import parse_load_balancer
from tests.unit import kubeobjects as k

PARAMS = owned.DataPlaneParams(
    image="wslb:test", config_url="wss://wslb-config.wslb-system.svc:9443", ca_pem="CA"
)
PORTS = (ServicePortSpec("secure", 443, 30443), ServicePortSpec("web", 80, None))


def lb(**spec: Any) -> Any:
    return parse_load_balancer(k.load_balancer("edge", "apps", **spec))


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_every_owned_object_has_a_controller_owner_reference() -> None:
    balancer = lb(replicas=3)
    manifests = [
        owned.config_secret(balancer, "CA"),
        owned.deployment(balancer, PORTS, 30, PARAMS),
        owned.service(balancer, PORTS),
        owned.metrics_service(balancer),
    ]
    expected = {
        "apiVersion": "wslb.io/v1alpha1",
        "kind": "LoadBalancer",
        "name": "edge",
        "uid": "uid-edge",
        "controller": True,
        "blockOwnerDeletion": True,
    }
    for manifest in manifests:
        assert manifest["metadata"]["ownerReferences"] == [expected]
        assert manifest["metadata"]["namespace"] == "apps"
        assert manifest["metadata"]["labels"]["wslb.io/load-balancer"] == "edge"
    names = [m["metadata"]["name"] for m in manifests]
    assert names == ["edge-wslb-config", "edge-wslb", "edge-wslb", "edge-wslb-metrics"]


def test_deployment_runs_non_root_with_a_read_only_root_filesystem() -> None:
    manifest = owned.deployment(lb(replicas=3), PORTS, 30, PARAMS)
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["spec"]["replicas"] == 3
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["sysctls"] == [
        {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}
    ]
    assert pod["automountServiceAccountToken"] is False
    security = container(manifest)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container(manifest)["volumeMounts"]}
    assert mounts == {"/etc/wslb/config": "config", "/var/lib/wslb": "state", "/tmp": "tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["state"] == {"name": "state", "emptyDir": {}}
    assert volumes["config"]["secret"]["secretName"] == "edge-wslb-config"


def test_deployment_args_point_at_the_config_server() -> None:
    c = container(owned.deployment(lb(), PORTS, 30, PARAMS))
    assert c["image"] == "wslb:test"
    assert c["args"] == [
        "wslb-dataplane",
        "--controller",
        "wss://wslb-config.wslb-system.svc:9443",
        "--load-balancer",
        "apps/edge",
        "--node",
        "$(POD_NAME)",
        "--token-file",
        "/etc/wslb/config/token",
        "--ca-file",
        "/etc/wslb/config/ca.crt",
        "--state-dir",
        "/var/lib/wslb",
        "--admin",
        "0.0.0.0:9901",
        "--workers",
        "1",
    ]
    assert c["env"][0]["name"] == "POD_NAME"
    assert c["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_deployment_passes_the_log_format_only_when_set() -> None:
    """The controller's WSLB_LOG_FORMAT reaches the data planes as --log-format; unset
    (an older data plane without the flag) adds nothing."""
    default_args = container(owned.deployment(lb(), PORTS, 30, PARAMS))["args"]
    assert "--log-format" not in default_args
    json_params = dataclasses.replace(PARAMS, log_format="json")
    args = container(owned.deployment(lb(), PORTS, 30, json_params))["args"]
    assert args[: len(default_args)] == default_args
    assert args[len(default_args) :] == ["--log-format", "json"]


def test_probes_and_termination_grace() -> None:
    manifest = owned.deployment(lb(), PORTS, 120, PARAMS)
    c = container(manifest)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 9901}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 9901}
    assert manifest["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 3615
    # Listener changes must never roll the data planes: the template ignores them.
    assert owned.deployment(lb(), [], 5, PARAMS) == manifest
    assert manifest["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    selector = manifest["spec"]["selector"]["matchLabels"]
    assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()


def test_service_has_one_port_per_listener_with_node_ports() -> None:
    manifest = owned.service(lb(service={"type": "NodePort", "annotations": {"a": "b"}}), PORTS)
    assert manifest["spec"]["type"] == "NodePort"
    assert manifest["metadata"]["annotations"] == {"a": "b"}
    assert manifest["spec"]["ports"] == [
        {"name": "secure", "port": 443, "targetPort": 443, "protocol": "TCP", "nodePort": 30443},
        {"name": "web", "port": 80, "targetPort": 80, "protocol": "TCP"},
    ]
    assert "admin" not in [port["name"] for port in manifest["spec"]["ports"]]
    assert manifest["spec"]["selector"] == {
        "app.kubernetes.io/name": "wslb-dataplane",
        "wslb.io/load-balancer": "edge",
    }


def test_default_service_type_is_load_balancer_and_cluster_ip_drops_node_ports() -> None:
    assert owned.service(lb(), PORTS)["spec"]["type"] == "LoadBalancer"
    cluster = owned.service(lb(service={"type": "ClusterIP"}), PORTS)
    assert all("nodePort" not in port for port in cluster["spec"]["ports"])


def test_metrics_service_is_headless_on_the_admin_port_named_metrics() -> None:
    manifest = owned.metrics_service(lb())
    assert manifest["spec"]["clusterIP"] == "None"
    assert manifest["spec"]["ports"] == [
        {"name": "metrics", "port": 9901, "targetPort": 9901, "protocol": "TCP"}
    ]


def test_data_plane_pod_names_its_metrics_port_and_is_annotated_for_scraping() -> None:
    plain = owned.deployment(lb(), PORTS, 120, PARAMS)
    assert container(plain)["ports"] == [
        {"name": "metrics", "containerPort": 9901, "protocol": "TCP"}
    ]
    assert "annotations" not in plain["spec"]["template"]["metadata"]
    scraped = dataclasses.replace(PARAMS, scrape_annotations=True)
    annotated = owned.deployment(lb(), PORTS, 120, scraped)["spec"]["template"]["metadata"]
    assert annotated["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9901",
        "prometheus.io/path": "/metrics",
    }
    # The LoadBalancer's own pod annotations win over ours.
    opted_out = lb(dataPlane={"podAnnotations": {"prometheus.io/scrape": "false", "a": "b"}})
    metadata = owned.deployment(opted_out, PORTS, 120, scraped)["spec"]["template"]["metadata"]
    assert metadata["annotations"]["prometheus.io/scrape"] == "false"
    assert metadata["annotations"]["a"] == "b"


def test_config_secret_has_a_random_token_ca_and_sticky_key() -> None:
    first = owned.config_secret(lb(), "CA PEM")
    second = owned.config_secret(lb(), "CA PEM")
    data = {key: base64.b64decode(value).decode() for key, value in first["data"].items()}
    assert set(data) == {"token", "ca.crt", "sticky-secret"}
    assert data["ca.crt"] == "CA PEM"
    assert len(base64.urlsafe_b64decode(data["token"] + "=")) == 32
    assert data["token"] != data["sticky-secret"]
    assert first["data"]["token"] != second["data"]["token"]


def pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return result


def test_data_plane_pods_get_default_requests_and_spread_across_nodes() -> None:
    manifest = owned.deployment(lb(), PORTS, 30, PARAMS)
    assert container(manifest)["resources"] == {"requests": {"cpu": "200m", "memory": "128Mi"}}
    assert pod_spec(manifest)["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "wslb-dataplane",
                    "wslb.io/load-balancer": "edge",
                }
            },
            "matchLabelKeys": ["pod-template-hash"],
        }
    ]
    for absent in ("nodeSelector", "tolerations", "affinity", "priorityClassName"):
        assert absent not in pod_spec(manifest)
    assert "imagePullSecrets" not in pod_spec(manifest)


def test_data_plane_knobs_reach_the_pod_template() -> None:
    resources = {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
    toleration = {"key": "edge", "operator": "Exists", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}
    zone_spread = {
        "maxSkew": 2,
        "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "DoNotSchedule",
    }
    balancer = lb(
        dataPlane={
            "workers": 4,
            "resources": resources,
            "nodeSelector": {"role": "edge"},
            "tolerations": [toleration],
            "affinity": affinity,
            "topologySpreadConstraints": [zone_spread],
            "podAnnotations": {"example.com/scrape": "true"},
            "podLabels": {"team": "web", "wslb.io/load-balancer": "hijack"},
            "priorityClassName": "edge-critical",
        }
    )
    params = owned.DataPlaneParams(
        image="wslb:test", config_url="wss://c:9443", image_pull_secrets=("regcred", "mirror")
    )
    manifest = owned.deployment(balancer, PORTS, 30, params)
    pod = pod_spec(manifest)
    c = container(manifest)
    assert c["args"][-2:] == ["--workers", "4"]
    assert c["resources"] == resources
    assert pod["nodeSelector"] == {"role": "edge"}
    assert pod["tolerations"] == [toleration]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "edge-critical"
    # The owned copy of the chart's pull Secrets, in the LoadBalancer's namespace.
    assert pod["imagePullSecrets"] == [{"name": "edge-wslb-pull"}]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread == {**zone_spread, "labelSelector": {"matchLabels": owned.selector(balancer)}}
    metadata = manifest["spec"]["template"]["metadata"]
    assert metadata["annotations"] == {"example.com/scrape": "true"}
    # The user's labels are added, but the selector labels cannot be overridden.
    assert metadata["labels"]["team"] == "web"
    assert metadata["labels"]["wslb.io/load-balancer"] == "edge"
    assert manifest["spec"]["selector"]["matchLabels"].items() <= metadata["labels"].items()


def test_default_requests_grow_with_workers() -> None:
    manifest = owned.deployment(lb(dataPlane={"workers": 3}), PORTS, 30, PARAMS)
    assert container(manifest)["resources"] == {"requests": {"cpu": "600m", "memory": "384Mi"}}


def test_disruption_budget_allows_one_data_plane_down() -> None:
    balancer = lb(replicas=4)
    budget = owned.disruption_budget(balancer)
    assert (budget["apiVersion"], budget["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert budget["metadata"]["name"] == "edge-wslb"
    assert budget["metadata"]["ownerReferences"][0]["uid"] == "uid-edge"
    assert budget["spec"]["maxUnavailable"] == 1
    deployment = owned.deployment(balancer, PORTS, 30, PARAMS)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_scale_selector_text_selects_the_data_plane_pods() -> None:
    assert owned.selector_text(lb()) == (
        "app.kubernetes.io/name=wslb-dataplane,wslb.io/load-balancer=edge"
    )


def test_service_knobs_reach_the_service() -> None:
    balancer = lb(
        service={
            "type": "LoadBalancer",
            "externalTrafficPolicy": "Cluster",
            "loadBalancerClass": "example.com/lb",
            "loadBalancerSourceRanges": ["10.0.0.0/8", "2001:db8::/32"],
            "ipFamilyPolicy": "PreferDualStack",
            "ipFamilies": ["IPv6", "IPv4"],
        }
    )
    spec = owned.service(balancer, PORTS)["spec"]
    assert spec["externalTrafficPolicy"] == "Cluster"
    assert spec["loadBalancerClass"] == "example.com/lb"
    assert spec["loadBalancerSourceRanges"] == ["10.0.0.0/8", "2001:db8::/32"]
    assert spec["ipFamilyPolicy"] == "PreferDualStack"
    assert spec["ipFamilies"] == ["IPv6", "IPv4"]


def test_service_defaults_keep_the_client_address_and_omit_load_balancer_fields() -> None:
    spec = owned.service(lb(service={"type": "NodePort"}), PORTS)["spec"]
    assert spec["externalTrafficPolicy"] == "Local"
    for absent in ("loadBalancerClass", "loadBalancerSourceRanges", "ipFamilyPolicy", "ipFamilies"):
        assert absent not in spec
    # A NodePort Service cannot carry load-balancer fields: they are dropped, not sent.
    spec = owned.service(
        lb(service={"type": "NodePort", "loadBalancerSourceRanges": ["10.0.0.0/8"]}), PORTS
    )["spec"]
    assert "loadBalancerSourceRanges" not in spec


def test_pull_secret_copy_is_a_docker_config_owned_by_the_load_balancer() -> None:
    manifest = owned.pull_secret(lb(), '{"auths":{}}')
    assert manifest["type"] == "kubernetes.io/dockerconfigjson"
    assert manifest["metadata"]["name"] == "edge-wslb-pull"
    assert manifest["metadata"]["namespace"] == "apps"
    assert manifest["metadata"]["ownerReferences"][0]["uid"] == "uid-edge"
    assert base64.b64decode(manifest["data"][".dockerconfigjson"]) == b'{"auths":{}}'


@pytest.mark.parametrize(
    ("service", "admin"),
    [
        ({}, "0.0.0.0:9901"),
        ({"ipFamilies": ["IPv4"]}, "0.0.0.0:9901"),
        ({"ipFamilies": ["IPv6"]}, ":9901"),
        ({"ipFamilyPolicy": "RequireDualStack"}, ":9901"),
    ],
)
def test_admin_port_follows_the_service_address_families(
    service: dict[str, Any], admin: str
) -> None:
    """Probes reach the admin port on the pod's IP: an IPv6 pod needs it on every family."""
    args = container(owned.deployment(lb(service=service), PORTS, 30, PARAMS))["args"]
    assert args[args.index("--admin") + 1] == admin
