"""The objects the controller owns per LoadBalancer, and how they reach the cluster.

Pure builders (no I/O, no kopf) turn a LoadBalancer and its build into plain manifests:
the config Secret `<lb>-wslb-config`, the data-plane Deployment, Service and
PodDisruptionBudget `<lb>-wslb`, the headless metrics Service `<lb>-wslb-metrics`, and
the pull Secret `<lb>-wslb-pull` when the chart names image pull secrets
(docs/resources.md). Each carries a controller owner reference to the LoadBalancer, so
deleting it garbage-collects them.

No I/O here: cluster.py applies what these return.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.builder import ServicePortSpec, listen_address
from controller.cluster import FIELD_MANAGER
from controller.models import (
    CA_KEY,
    GROUP,
    STICKY_SECRET_KEY,
    TOKEN_KEY,
    VERSION,
    LoadBalancer,
    ServiceType,
)
from controller.store import config_secret_name, owned_name

ADMIN_PORT = 9901
METRICS_PORT_NAME = "metrics"  # the admin port serves /metrics; the PodMonitor names it
RUN_AS = 10001  # the image's user (Dockerfile)
DRAIN_MARGIN_SECONDS = 15
MAX_DRAIN_SECONDS = 3600  # the CRD's maximum drainTimeoutSeconds
PRESTOP_SECONDS = 3  # part of the grace period: the margin covers it
LB_LABEL = "wslb.io/load-balancer"
NAME_LABEL = "app.kubernetes.io/name"
DATA_PLANE = "wslb-dataplane"
CONFIG_MOUNT = "/etc/wslb/config"
STATE_DIR = "/var/lib/wslb"


@dataclass(frozen=True)
class DataPlaneParams:
    """What every data-plane Deployment shares: image and where the controller is."""

    image: str
    config_url: str
    ca_pem: str = ""
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    """The chart's pull Secrets (controller namespace); when set, the pods pull with the
    owned copy `<lb>-wslb-pull` (pull_secrets.py)."""
    log_format: str | None = None
    """`--log-format` of the data planes (the controller's own); None passes no flag, for
    a data-plane image that predates it."""
    scrape_annotations: bool = False
    """Annotate the pods with `prometheus.io/scrape`, `port` and `path` for a Prometheus
    that discovers pods by annotation (the chart turns it off under a PodMonitor)."""


def metrics_service_name(load_balancer: str) -> str:
    return f"{owned_name(load_balancer)}-metrics"


def pull_secret_name(load_balancer: str) -> str:
    return f"{owned_name(load_balancer)}-pull"


def pull_secret(lb: LoadBalancer, docker_config: str) -> dict[str, Any]:
    """The registry credentials of the chart's pull Secrets, in the LoadBalancer's
    namespace, where its pods can use them."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(lb, pull_secret_name(lb.meta.name)),
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(docker_config.encode()).decode()},
    }


def selector(lb: LoadBalancer) -> dict[str, str]:
    return {NAME_LABEL: DATA_PLANE, LB_LABEL: lb.meta.name}


def selector_text(lb: LoadBalancer) -> str:
    """The selector as `status.selector` carries it for the scale subresource (HPA)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector(lb).items()))


def default_resources(workers: int) -> dict[str, Any]:
    """Requests only: a data plane holding live sockets must not be BestEffort (first to be
    evicted), and a CPU limit would throttle the event loop mid-frame; memory grows with
    connections, so its limit is the operator's to set for their tier."""
    return {"requests": {"cpu": f"{200 * workers}m", "memory": f"{128 * workers}Mi"}}


def spread(lb: LoadBalancer, constraints: Sequence[Mapping[str, Any]] | None) -> list[Any]:
    """Topology spread: by default one data plane per node where possible (ScheduleAnyway,
    so a small cluster still schedules all). A given constraint without a labelSelector gets
    the data planes' own, so it spreads what it means to spread."""
    if constraints is None:
        return [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector(lb)},
                # Count only the pods of the current revision during a rollout.
                "matchLabelKeys": ["pod-template-hash"],
            }
        ]
    return [{"labelSelector": {"matchLabels": selector(lb)}, **dict(item)} for item in constraints]


def scrape_annotations() -> dict[str, str]:
    """The annotations a Prometheus without the Operator discovers scrape targets by."""
    return {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(ADMIN_PORT),
        "prometheus.io/path": "/metrics",
    }


def labels(lb: LoadBalancer) -> dict[str, str]:
    return {**selector(lb), "app.kubernetes.io/managed-by": FIELD_MANAGER}


def owner_reference(lb: LoadBalancer) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoadBalancer",
        "name": lb.meta.name,
        "uid": lb.meta.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(lb: LoadBalancer, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": lb.meta.namespace,
        "labels": labels(lb),
        "ownerReferences": [owner_reference(lb)],
    }


def new_token() -> str:
    """A fresh bearer token: 32 random bytes, url-safe base64."""
    return secrets.token_urlsafe(32)


def config_secret(
    lb: LoadBalancer, ca_pem: str, token_factory: Callable[[], str] = new_token
) -> dict[str, Any]:
    """The config Secret, with a new token and sticky-cookie key (created once only)."""

    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(lb, config_secret_name(lb.meta.name)),
        "type": "Opaque",
        "data": {
            TOKEN_KEY: b64(token_factory()),
            CA_KEY: b64(ca_pem),
            STICKY_SECRET_KEY: b64(token_factory()),
        },
    }


def admin_address(lb: LoadBalancer) -> str:
    """The data plane's admin port (probes, metrics): every IPv4 and IPv6 address (an empty
    host) when the Service asks for IPv6, as the listeners bind `::`; else `0.0.0.0`, since a
    pod in an IPv4-only cluster may have IPv6 disabled."""
    host = "" if listen_address(lb) == "::" else "0.0.0.0"
    return f"{host}:{ADMIN_PORT}"


def deployment(
    lb: LoadBalancer,
    ports: Sequence[ServicePortSpec],
    max_drain_seconds: int,
    params: DataPlaneParams,
) -> dict[str, Any]:
    """The data-plane Deployment: non-root, read-only root filesystem, probes on the
    admin port, and a grace period longer than any listener drain.

    The pod template must not depend on the Listeners (their ports, their drain times):
    a template change rolls every data plane and would cut live connections, while a
    Listener change must reach running data planes over the config channel. So container
    ports list only the admin port (Services target port numbers), and the grace period is
    the longest drain the CRD allows; a data plane exits as soon as it has drained."""
    del ports, max_drain_seconds  # deliberately unused, see above
    assert lb.spec is not None
    name = lb.meta.name
    plane = lb.spec.data_plane
    args = [
        "wslb-dataplane",
        "--controller",
        params.config_url,
        "--load-balancer",
        lb.meta.key,
        "--node",
        "$(POD_NAME)",
        "--token-file",
        f"{CONFIG_MOUNT}/{TOKEN_KEY}",
        "--ca-file",
        f"{CONFIG_MOUNT}/{CA_KEY}",
        "--state-dir",
        STATE_DIR,
        "--admin",
        admin_address(lb),
        "--workers",
        str(plane.workers),
    ]
    if params.log_format is not None:
        args += ["--log-format", params.log_format]
    container_ports = [{"name": METRICS_PORT_NAME, "containerPort": ADMIN_PORT, "protocol": "TCP"}]
    # The user's labels first: the selector labels must win, or the pods leave their set.
    pod_metadata: dict[str, Any] = {"labels": {**plane.pod_labels, **labels(lb)}}
    # Ours first: the user's annotations win (e.g. prometheus.io/scrape: "false").
    annotations = {**(scrape_annotations() if params.scrape_annotations else {})}
    annotations.update(plane.pod_annotations)
    if annotations:
        pod_metadata["annotations"] = annotations
    scheduling: dict[str, Any] = {
        "topologySpreadConstraints": spread(lb, plane.topology_spread_constraints)
    }
    if plane.node_selector:
        scheduling["nodeSelector"] = dict(plane.node_selector)
    if plane.tolerations:
        scheduling["tolerations"] = [dict(item) for item in plane.tolerations]
    if plane.affinity:
        scheduling["affinity"] = dict(plane.affinity)
    if plane.priority_class_name:
        scheduling["priorityClassName"] = plane.priority_class_name
    if params.image_pull_secrets:
        scheduling["imagePullSecrets"] = [{"name": pull_secret_name(name)}]

    def probe(path: str, period: int, failures: int) -> dict[str, Any]:
        return {
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        }

    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(lb, owned_name(name)),
        "spec": {
            "replicas": lb.spec.replicas,
            "selector": {"matchLabels": selector(lb)},
            # Never fewer ready data planes than asked for during a rollout.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": pod_metadata,
                "spec": {
                    "automountServiceAccountToken": False,  # it never talks to the API
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": MAX_DRAIN_SECONDS + DRAIN_MARGIN_SECONDS,
                    **scheduling,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                        # Listener ports below 1024 without root or capabilities.
                        "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
                    },
                    "containers": [
                        {
                            "name": "dataplane",
                            "image": params.image,
                            "imagePullPolicy": params.image_pull_policy,
                            "args": args,
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "ports": container_ports,
                            "resources": plane.resources
                            if plane.resources is not None
                            else default_resources(plane.workers),
                            "readinessProbe": probe("/readyz", 2, 2),
                            # Let endpoint removal reach every node before the drain starts.
                            "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
                            "livenessProbe": probe("/healthz", 10, 3),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "runAsNonRoot": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "config", "mountPath": CONFIG_MOUNT, "readOnly": True},
                                {"name": "state", "mountPath": STATE_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "config",
                            "secret": {
                                "secretName": config_secret_name(name),
                                "items": [
                                    {"key": TOKEN_KEY, "path": TOKEN_KEY},
                                    {"key": CA_KEY, "path": CA_KEY},
                                ],
                            },
                        },
                        {"name": "state", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def service(lb: LoadBalancer, ports: Sequence[ServicePortSpec]) -> dict[str, Any]:
    """The data-plane Service: one port per accepted Listener; nodePorts where they apply."""
    assert lb.spec is not None
    service_type = lb.spec.service.type
    has_node_ports = service_type is not ServiceType.CLUSTER_IP
    rendered = []
    for port in ports:
        item: dict[str, Any] = {
            "name": port.name,
            "port": port.port,
            "targetPort": port.port,
            "protocol": "TCP",
        }
        if has_node_ports and port.node_port is not None:
            item["nodePort"] = port.node_port
        rendered.append(item)
    metadata = _metadata(lb, owned_name(lb.meta.name))
    if lb.spec.service.annotations:
        metadata["annotations"] = dict(lb.spec.service.annotations)
    knobs = lb.spec.service
    spec: dict[str, Any] = {
        "type": service_type.value,
        "selector": selector(lb),
        "ports": rendered,
    }
    if has_node_ports:
        # Local (the default) keeps the client's address (source ACLs, X-Forwarded-For):
        # no SNAT to a node IP, at the price of nodes without a data plane failing the
        # cloud's health check. Cluster spreads evenly but hides the client.
        spec["externalTrafficPolicy"] = knobs.external_traffic_policy.value
    if service_type is ServiceType.LOAD_BALANCER:
        if knobs.load_balancer_class:
            spec["loadBalancerClass"] = knobs.load_balancer_class
        if knobs.load_balancer_source_ranges:
            spec["loadBalancerSourceRanges"] = list(knobs.load_balancer_source_ranges)
    if knobs.ip_family_policy is not None:
        spec["ipFamilyPolicy"] = knobs.ip_family_policy.value
    if knobs.ip_families:
        spec["ipFamilies"] = list(knobs.ip_families)
    return {"apiVersion": "v1", "kind": "Service", "metadata": metadata, "spec": spec}


def disruption_budget(lb: LoadBalancer) -> dict[str, Any]:
    """At most one data plane down by a voluntary disruption (node drain, cluster upgrade):
    the others keep every other client connected while the evicted one drains."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(lb, owned_name(lb.meta.name)),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector(lb)},
            # A pod that never became ready may be evicted: it serves nobody.
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def metrics_service(lb: LoadBalancer) -> dict[str, Any]:
    """Headless Service over every data plane's admin port (named `metrics`, as in the
    pods), for Prometheus discovery."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(lb, metrics_service_name(lb.meta.name)),
        "spec": {
            "clusterIP": "None",
            "selector": selector(lb),
            "ports": [
                {
                    "name": METRICS_PORT_NAME,
                    "port": ADMIN_PORT,
                    "targetPort": ADMIN_PORT,  # by number: pods of older versions named it admin
                    "protocol": "TCP",
                }
            ],
        },
    }
