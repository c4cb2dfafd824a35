"""Writing `status` of LoadBalancers and Listeners: what to say, and only when it changed.

This module owns the status bodies (observedGeneration, conditions, backend counts,
address, data-plane counts, the per-data-plane capacity share, and the `replicas` and
`selector` that the scale subresource reads) and a cache of what was written, so an
unchanged status is never patched again. It does not decide the conditions (status.py
does) or build anything (builder.py); a failed patch is logged, counted and reported to
the caller, which retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from controller import owned
from controller import status as st
from controller.builder import TIER_LIMITS, Build, share
from controller.cluster import Cluster
from controller.metrics import ControllerMetrics
from controller.models import Kind, Listener, LoadBalancer, ServiceType, key_of
from controller.store import Store, owned_name
from lbwire.session import PushSession

log = logging.getLogger("wslb.status")


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def same(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """True when `current` already carries every field of `desired` with the same value
    (a null in `desired` matches an absent field)."""
    return all(current.get(field) == value for field, value in desired.items())


class StatusWriter:
    def __init__(
        self,
        store: Store,
        cluster: Cluster,
        metrics: ControllerMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.metrics = metrics
        self.clock = clock
        self._written: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, key, uid)

    async def write(
        self,
        key: str,
        result: Build,
        sessions: Sequence[PushSession],
        digest: str | None,
        apply_error: str | None = None,
    ) -> bool:
        """Status of `key`'s Listeners and of the LoadBalancer itself; False if a patch
        failed. `digest` is that of the published snapshot (None when none is);
        `apply_error` why the API server refused an owned object."""
        now = rfc3339(self.clock())
        ok = True
        lb = self.store.load_balancers.get(key)
        desired = lb.spec.replicas if lb is not None and lb.spec is not None else 0
        lb_name = key.partition("/")[2]
        for item in result.listeners:
            listener = self.store.listeners.get(item.key)
            if listener is None:
                continue
            programmed = st.listener_programmed(
                item.name, item.generation, sessions, item.in_snapshot, item.why_not, desired
            )
            self.metrics.listener_programmed(
                item.key, lb_name, programmed.status == st.TRUE, programmed.reason
            )
            conditions = [item.accepted, item.resolved_refs, item.conflicted, programmed]
            body: dict[str, Any] = {
                "observedGeneration": item.generation,
                "ruleCount": item.rule_count,
                "readyBackends": item.ready_backends,
                "totalBackends": item.total_backends,
            }
            ok = await self._patch(Kind.LISTENER, listener, body, conditions, now) and ok
        if lb is not None and result.accepted is not None:
            body, conditions = self.load_balancer_status(lb, result, sessions, digest, apply_error)
            ok = await self._patch(Kind.LOAD_BALANCER, lb, body, conditions, now) and ok
        return ok

    def load_balancer_status(
        self,
        lb: LoadBalancer,
        result: Build,
        sessions: Sequence[PushSession],
        digest: str | None,
        apply_error: str | None = None,
    ) -> tuple[dict[str, Any], list[st.Condition]]:
        assert result.accepted is not None
        generation = lb.meta.generation
        digest = digest if result.snapshot is not None else None
        replicas = lb.spec.replicas if lb.spec is not None else 0
        programmed = st.load_balancer_programmed(digest, sessions, generation, replicas)
        if apply_error:
            programmed = st.Condition.of(
                st.PROGRAMMED, False, st.REASON_APPLY_FAILED, apply_error, generation
            )
        conditions = [result.accepted, programmed]
        body: dict[str, Any] = {
            "observedGeneration": generation,
            "address": self.address(lb.meta.key),
            "dataPlanes": {
                "desired": replicas,
                "connected": len(sessions),
                "acked": st.acked_count(digest, sessions),
            },
            "appliedVersion": st.applied_version(sessions),
            # The scale subresource (kubectl scale, HPA): the replicas the Deployment is
            # set to and the label selector of its pods.
            "replicas": replicas,
            "selector": owned.selector_text(lb),
        }
        if lb.spec is not None:
            total = TIER_LIMITS[lb.spec.tier]
            each = share(total, replicas)
            workers = lb.spec.data_plane.workers
            body["capacity"] = {
                "maxConnections": total.max_connections,
                "newConnectionsPerSecond": total.new_connections_per_second,
                "perDataPlane": {
                    "maxConnections": each.max_connections,
                    "newConnectionsPerSecond": each.new_connections_per_second,
                },
                "workersPerDataPlane": workers,
            }
        return body, conditions

    async def _patch(
        self,
        kind: Kind,
        obj: LoadBalancer | Listener,
        body: dict[str, Any],
        conditions: list[st.Condition],
        now: str,
    ) -> bool:
        """Patch a status unless it already says that; True unless the patch failed."""
        meta = obj.meta
        cache_key = (kind.value, meta.key, meta.uid)
        written = self._written.get(cache_key)
        basis = written if written is not None else obj.status
        desired = {
            **body,
            "conditions": st.merge_conditions(basis.get("conditions") or [], conditions, now),
        }
        if desired == written or same(desired, obj.status):
            return True
        try:
            await self.cluster.patch_status(kind, meta.namespace, meta.name, desired)
        except Exception as exc:
            log.warning("status of %s %s not written: %s", kind.value, meta.key, exc)
            self.metrics.status_patch_errors_total.labels(kind.value).inc()
            return False
        self._written[cache_key] = desired
        return True

    def prune(self) -> None:
        """Forget what was written to objects that are gone (bounded memory)."""
        self.metrics.keep_listeners(self.store.listeners)
        for cache_key in list(self._written):
            kind, key, _ = cache_key
            objects = (
                self.store.listeners if kind == Kind.LISTENER.value else self.store.load_balancers
            )
            if key not in objects:
                del self._written[cache_key]

    def address(self, key: str) -> str:
        namespace, _, name = key.partition("/")
        service = self.store.services.get(key_of(namespace, owned_name(name)))
        if service is None:
            return ""
        if service.ingress:
            return ", ".join(service.ingress)
        node_ports = [port.node_port for port in service.ports if port.node_port]
        if service.type != ServiceType.CLUSTER_IP.value and node_ports:
            return ", ".join(f"<nodeIP>:{port}" for port in node_ports)
        return service.cluster_ip
