"""Every controller metric, with its help text, in one registry.

Names are `wslb_controller_<thing>_<unit>`; labels are bounded (kind, result, load
balancer, nack reason), never a client address. The config server calls `pushed`,
`acked`, `nacked` and `connected`; the handlers call `event`; the reconciler calls the
rest. This module must not import kopf or do I/O beyond rendering the exposition text.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.leader = Gauge(
            "wslb_controller_leader",
            "1 while this replica holds the leader Lease and reconciles; 0 while it stands by.",
            registry=r,
        )
        self.events_total = Counter(
            "wslb_controller_events_total",
            "Watch events received, by kind and event type.",
            ["kind", "type"],
            registry=r,
        )
        self.reconciles_total = Counter(
            "wslb_controller_reconciles_total",
            "LoadBalancer reconciles (build, publish, owned objects, status), by result.",
            ["result"],
            registry=r,
        )
        self.builds_total = Counter(
            "wslb_controller_builds_total",
            "Snapshots built whose content changed and were published.",
            registry=r,
        )
        self.build_duration_seconds = Histogram(
            "wslb_controller_build_duration_seconds",
            "Time to build one LoadBalancer's snapshot and status.",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=r,
        )
        self.snapshots_pushed_total = Counter(
            "wslb_controller_snapshots_pushed_total",
            "Snapshot messages sent to data planes.",
            ["load_balancer"],
            registry=r,
        )
        self.acks_total = Counter(
            "wslb_controller_acks_total",
            "Snapshots acknowledged by data planes.",
            ["load_balancer"],
            registry=r,
        )
        self.nacks_total = Counter(
            "wslb_controller_nacks_total",
            "Snapshots rejected by data planes, by nack reason.",
            ["load_balancer", "reason"],
            registry=r,
        )
        self.push_ack_seconds = Histogram(
            "wslb_controller_push_ack_seconds",
            "Time from sending a snapshot to one data plane's ack.",
            ["load_balancer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.data_planes_connected = Gauge(
            "wslb_controller_data_planes_connected",
            "Data planes connected to the config server.",
            ["load_balancer"],
            registry=r,
        )
        self.propagation_seconds = Histogram(
            "wslb_controller_propagation_seconds",
            "Time from the first change that triggered a build to the ack of that snapshot"
            " by every connected data plane.",
            ["load_balancer"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.status_patch_errors_total = Counter(
            "wslb_controller_status_patch_errors_total",
            "Status patches that failed (retried on the next round), by kind.",
            ["kind"],
            registry=r,
        )
        self.apply_errors_total = Counter(
            "wslb_controller_apply_errors_total",
            "Owned-object applies that failed (retried on the next round).",
            registry=r,
        )

    # ------------------------------------------------------------------ config server

    def pushed(self, lb: str) -> None:
        self.snapshots_pushed_total.labels(lb).inc()

    def acked(self, lb: str, seconds: float) -> None:
        self.acks_total.labels(lb).inc()
        self.push_ack_seconds.labels(lb).observe(seconds)

    def nacked(self, lb: str, reason: str) -> None:
        self.nacks_total.labels(lb, reason).inc()

    def connected(self, lb: str, count: int) -> None:
        self.data_planes_connected.labels(lb).set(count)

    # ------------------------------------------------------------------ handlers, reconciler

    def event(self, kind: str, type_: str | None) -> None:
        self.events_total.labels(kind, type_ or "LIST").inc()

    def reconciled(self, result: str) -> None:
        self.reconciles_total.labels(result).inc()

    def built(self, seconds: float, published: bool) -> None:
        self.build_duration_seconds.observe(seconds)
        if published:
            self.builds_total.inc()

    def propagated(self, lb: str, seconds: float) -> None:
        self.propagation_seconds.labels(lb).observe(seconds)

    def forgotten(self, lb: str) -> None:
        """A LoadBalancer was deleted: drop its gauge so it does not report forever."""
        try:
            self.data_planes_connected.remove(lb)
        except KeyError:
            pass

    def render(self) -> bytes:
        return generate_latest(self.registry)
