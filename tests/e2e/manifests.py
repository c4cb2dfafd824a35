"""Manifests the smoke tests deploy, built as dicts (JSON is YAML) so tests can vary them.

Every workload runs our image the way the chart will: non-root (the image's fixed UID),
read-only root filesystem, no privilege escalation, all capabilities dropped.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.kind_cluster import WSLB_IMAGE

#: The image's fixed non-root UID (Dockerfile: WSLB_UID).
WSLB_UID = 10001
ECHO_PORT = 8080

RESTRICTED_CONTAINER: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def dump(*objects: dict[str, Any]) -> str:
    """A multi-document manifest for `kubectl apply -f -`."""
    return "\n---\n".join(json.dumps(o) for o in objects)


def echo_deployment(
    name: str,
    replicas: int = 2,
    readiness: dict[str, Any] | None = None,
    image: str = WSLB_IMAGE,
    hold_on_sigterm: bool = False,
    grace_seconds: int = 5,
) -> dict[str, Any]:
    """The demo echo backend; `whoami` answers the pod's name (POD_NAME). With
    `hold_on_sigterm` it keeps its open connections when told to stop, until its peers
    close them or the grace period ends."""
    command = ["wslb-echo", "--host", "0.0.0.0", "--port", str(ECHO_PORT)]
    if hold_on_sigterm:
        command.append("--hold-on-sigterm")
    probe = readiness or {
        "httpGet": {"path": "/healthz", "port": ECHO_PORT},
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    # no docker-link env vars: a Service named "echo" would otherwise set
                    # ECHO_PORT=tcp://... in every pod, which wslb-echo reads as its port
                    "enableServiceLinks": False,
                    "securityContext": RESTRICTED_POD,
                    "terminationGracePeriodSeconds": grace_seconds,
                    "containers": [
                        {
                            "name": "echo",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "command": command,
                            "env": [
                                {
                                    "name": "POD_NAME",
                                    "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                                }
                            ],
                            "ports": [{"name": "ws", "containerPort": ECHO_PORT}],
                            "readinessProbe": probe,
                            "securityContext": RESTRICTED_CONTAINER,
                            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
                        }
                    ],
                    "volumes": volumes,
                },
            },
        },
    }


def service(name: str, node_port: int | None = None) -> dict[str, Any]:
    """A Service for the echo Deployment `name`; NodePort when `node_port` is given."""
    port: dict[str, Any] = {"name": "ws", "port": ECHO_PORT, "targetPort": "ws"}
    spec: dict[str, Any] = {"selector": {"app": name}, "ports": [port]}
    if node_port is not None:
        spec["type"] = "NodePort"
        port["nodePort"] = node_port
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def client_pod(name: str, script: str, image: str = WSLB_IMAGE) -> dict[str, Any]:
    """A one-shot pod of our image running a Python script (restartPolicy Never)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "enableServiceLinks": False,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "client",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", script],
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
