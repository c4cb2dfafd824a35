"""Kubernetes object bodies for the controller's unit tests, as the API server sends them."""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from controller.models import Kind, parse
from controller.store import Store
from dataplane.certs import self_signed

NS = "default"
T0 = "2026-01-01T00:00:00Z"


def meta(name: str, ns: str = NS, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": ns,
        "uid": f"uid-{name}",
        "creationTimestamp": T0,
        "generation": 1,
        **extra,
    }


def load_balancer(name: str = "lb", ns: str = NS, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "wslb.io/v1alpha1",
        "kind": "LoadBalancer",
        "metadata": meta(name, ns),
        "spec": spec,
    }


def listener(
    name: str = "web",
    *,
    lb: str = "lb",
    port: int = 80,
    backends: list[dict[str, Any]] | None = None,
    generation: int = 1,
    created: str = T0,
    ns: str = NS,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "wslb.io/v1alpha1",
        "kind": "Listener",
        "metadata": meta(name, ns, generation=generation, creationTimestamp=created),
        "spec": {
            "loadBalancerRef": {"name": lb},
            "protocol": "HTTP",
            "port": port,
            "backends": backends
            if backends is not None
            else [{"serviceName": "echo", "port": 8080}],
            **spec,
        },
    }


def service(
    name: str = "echo", ports: Iterable[tuple[str, int]] = (("http", 8080),), ns: str = NS
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, ns),
        "spec": {
            "type": "ClusterIP",
            "clusterIP": "10.96.0.10",
            "ports": [{"name": n, "port": p, "targetPort": p, "protocol": "TCP"} for n, p in ports],
        },
    }


def endpoint(
    address: str, ready: bool | None = True, terminating: bool | None = False
) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if terminating is not None:
        conditions["terminating"] = terminating
    return {"addresses": [address], "conditions": conditions}


def endpoint_slice(
    name: str,
    service_name: str = "echo",
    endpoints: Iterable[dict[str, Any]] = (),
    ports: Iterable[tuple[str, int]] = (("http", 9000),),
    ns: str = NS,
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": meta(name, ns, labels={"kubernetes.io/service-name": service_name}),
        "addressType": "IPv4",
        "ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports],
        "endpoints": list(endpoints),
    }


def secret(name: str, data: dict[str, str], type_: str = "Opaque", ns: str = NS) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(name, ns),
        "type": type_,
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def certificate(*names: str) -> tuple[str, str]:
    """A self-signed ECDSA certificate for `names` (its DNS SANs; default lb.example) and
    its key, PEM."""
    return self_signed(list(names) or ["lb.example"])


KINDS = {kind.value: kind for kind in Kind}


def store_of(*bodies: dict[str, Any], synced: bool = True) -> Store:
    store = Store()
    for body in bodies:
        store.put(parse(KINDS[body["kind"]], body))
    if synced:
        for kind in Kind:
            store.mark_listed(kind)
    return store
