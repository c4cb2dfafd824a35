"""In-memory indexes of the watched objects, keyed by `namespace/name`.

This module owns what the controller knows about the cluster: the parsed objects of the
five watched kinds, whether each kind has finished its initial listing, and which
LoadBalancers a change touches (so that only those are rebuilt). It must not import
kopf or do I/O; the handlers feed it and the builder reads it.
"""

from __future__ import annotations

from collections import defaultdict

from controller.models import (
    EndpointSlice,
    Kind,
    KubeObject,
    Listener,
    LoadBalancer,
    Secret,
    Service,
    key_of,
)

OWNED_SERVICE_SUFFIX = "-wslb"
CONFIG_SECRET_SUFFIX = "-wslb-config"  # noqa: S105 - a name


def config_secret_name(load_balancer: str) -> str:
    """The owned Secret `<lb>-wslb-config` of a LoadBalancer name."""
    return f"{load_balancer}{CONFIG_SECRET_SUFFIX}"


def owned_name(load_balancer: str) -> str:
    """The owned Deployment and Service `<lb>-wslb` of a LoadBalancer name."""
    return f"{load_balancer}{OWNED_SERVICE_SUFFIX}"


class Store:
    """The indexes. `put` and `delete` return the keys of the LoadBalancers affected."""

    def __init__(self) -> None:
        self.load_balancers: dict[str, LoadBalancer] = {}
        self.listeners: dict[str, Listener] = {}
        self.services: dict[str, Service] = {}
        self.endpoint_slices: dict[str, EndpointSlice] = {}
        self.secrets: dict[str, Secret] = {}
        self._listed: set[Kind] = set()
        self._slices_by_service: dict[str, set[str]] = defaultdict(set)
        self._listeners_by_namespace: dict[str, set[str]] = defaultdict(set)

    # ------------------------------------------------------------------ sync gate

    def mark_listed(self, kind: Kind) -> None:
        self._listed.add(kind)

    def listed(self, kind: Kind) -> bool:
        return kind in self._listed

    @property
    def synced(self) -> bool:
        """Every kind finished its initial listing: a build now sees the whole cluster."""
        return all(kind in self._listed for kind in Kind)

    # ------------------------------------------------------------------ updates

    def put(self, obj: KubeObject) -> set[str]:
        """Insert or replace an object; return the LoadBalancers it affected before or now."""
        key = obj.meta.key
        old: KubeObject | None
        if isinstance(obj, LoadBalancer):
            old = self.load_balancers.get(key)
            self.load_balancers[key] = obj
        elif isinstance(obj, Listener):
            old = self.listeners.get(key)
            self.listeners[key] = obj
            self._listeners_by_namespace[obj.meta.namespace].add(key)
        elif isinstance(obj, Service):
            old = self.services.get(key)
            self.services[key] = obj
        elif isinstance(obj, EndpointSlice):
            old = self.endpoint_slices.pop(key, None)
            if old is not None:
                self._unlink_slice(old)
            self.endpoint_slices[key] = obj
            self._slices_by_service[obj.service_key].add(key)
        else:
            old = self.secrets.get(key)
            self.secrets[key] = obj
        affected = self.affected_by(obj)
        if old is not None:
            affected |= self.affected_by(old)
        return affected

    def delete(self, kind: Kind, namespace: str, name: str) -> set[str]:
        """Remove an object; return the LoadBalancers it affected."""
        key = key_of(namespace, name)
        old: KubeObject | None
        if kind is Kind.LOAD_BALANCER:
            old = self.load_balancers.pop(key, None)
            return {key}  # even unknown: its data planes and status must be cleaned up
        if kind is Kind.LISTENER:
            old = self.listeners.pop(key, None)
            self._listeners_by_namespace[namespace].discard(key)
        elif kind is Kind.SERVICE:
            old = self.services.pop(key, None)
        elif kind is Kind.ENDPOINT_SLICE:
            old = self.endpoint_slices.pop(key, None)
            if old is not None:
                self._unlink_slice(old)
        else:
            old = self.secrets.pop(key, None)
        return self.affected_by(old) if old is not None else set()

    def _unlink_slice(self, old: EndpointSlice) -> None:
        keys = self._slices_by_service.get(old.service_key)
        if keys is not None:
            keys.discard(old.meta.key)
            if not keys:
                del self._slices_by_service[old.service_key]

    # ------------------------------------------------------------------ queries

    def listeners_in(self, namespace: str) -> list[Listener]:
        keys = self._listeners_by_namespace.get(namespace, set())
        return [self.listeners[key] for key in keys if key in self.listeners]

    def listeners_of(self, load_balancer: str) -> list[Listener]:
        """Listeners whose loadBalancerRef names `load_balancer` (`ns/name`)."""
        namespace = load_balancer.partition("/")[0]
        return [
            item for item in self.listeners_in(namespace) if item.load_balancer_key == load_balancer
        ]

    def slices_of(self, service: str) -> list[EndpointSlice]:
        """EndpointSlices labelled with the Service `ns/name`, in a stable order."""
        keys = sorted(self._slices_by_service.get(service, set()))
        return [self.endpoint_slices[key] for key in keys]

    def affected_by(self, obj: KubeObject) -> set[str]:
        """The LoadBalancers whose snapshot or status may depend on `obj`."""
        namespace = obj.meta.namespace
        if isinstance(obj, LoadBalancer):
            return {obj.meta.key}
        if isinstance(obj, Listener):
            return {obj.load_balancer_key} if obj.load_balancer_key else set()
        if isinstance(obj, Service | EndpointSlice):
            service = obj.meta.name if isinstance(obj, Service) else obj.service_name
            affected = {
                item.load_balancer_key
                for item in self.listeners_in(namespace)
                if item.spec is not None
                and item.load_balancer_key
                and service in item.spec.service_names()
            }
            if isinstance(obj, Service) and service.endswith(OWNED_SERVICE_SUFFIX):
                owner = key_of(namespace, service.removesuffix(OWNED_SERVICE_SUFFIX))
                if owner in self.load_balancers:
                    affected.add(owner)  # its address is in the LoadBalancer's status
            return affected
        assert isinstance(obj, Secret)
        name = obj.meta.name
        affected = {
            item.load_balancer_key
            for item in self.listeners_in(namespace)
            if item.spec is not None and item.load_balancer_key and name in item.spec.secret_names()
        }
        if name.endswith(CONFIG_SECRET_SUFFIX):
            owner = key_of(namespace, name.removesuffix(CONFIG_SECRET_SUFFIX))
            if owner in self.load_balancers:
                affected.add(owner)
        return affected
