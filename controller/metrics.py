"""Every controller metric, with its help text, in one registry.

Names are `wslb_controller_<thing>_<unit>` (and the shared `wslb_build_info`); labels are
bounded (kind, result, LoadBalancer namespace and name, listener, nack reason), never a
client address. A LoadBalancer's own `namespace` label must survive the scrape
(honor_labels; the chart's ServiceMonitor sets it). The
config server calls `pushed`, `acked`, `nacked` and `connected`; the handlers call
`event`; the status writer calls `listener_programmed` and `keep_listeners`; the reconciler
calls the rest. This module must not import kopf or do I/O beyond rendering the exposition
text (Prometheus text, or OpenMetrics when the scraper's Accept header asks for it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder

from lbwire.build import BUILD_INFO, BUILD_INFO_HELP, build_labels

# The nack reasons data planes send (dataplane/config_client.py). Their counters exist at 0
# from the moment a data plane of the LoadBalancer connects, so that `increase()` sees the
# first nack (a series born at 1 has no earlier sample to increase from).
NACK_REASONS = ("InvalidConfig", "DigestMismatch", "ApplyFailed")

# A LoadBalancer's series carry its namespace and name, as the data planes' targets do (the
# chart's PodMonitor), so one selector serves both and alerts route by namespace.
LB_LABELS = ["namespace", "load_balancer"]

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        labels = build_labels()
        self.build_info = Gauge(BUILD_INFO, BUILD_INFO_HELP, list(labels), registry=r)
        self.build_info.labels(**labels).set(1)
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
            LB_LABELS,
            registry=r,
        )
        self.acks_total = Counter(
            "wslb_controller_acks_total",
            "Snapshots acknowledged by data planes.",
            LB_LABELS,
            registry=r,
        )
        self.nacks_total = Counter(
            "wslb_controller_nacks_total",
            "Snapshots rejected by data planes, by nack reason.",
            ["namespace", "load_balancer", "reason"],
            registry=r,
        )
        self.push_ack_seconds = Histogram(
            "wslb_controller_push_ack_seconds",
            "Time from sending a snapshot to one data plane's ack.",
            LB_LABELS,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.data_planes_connected = Gauge(
            "wslb_controller_data_planes_connected",
            "Data planes connected to the config server.",
            LB_LABELS,
            registry=r,
        )
        self.propagation_seconds = Histogram(
            "wslb_controller_propagation_seconds",
            "Time from the first change that triggered a build to the ack of that snapshot"
            " by every connected data plane.",
            LB_LABELS,
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
        self.listener_programmed_state = Gauge(
            "wslb_controller_listener_programmed",
            "1 when the Listener's Programmed condition is True, else 0; `reason` is the"
            " condition's reason. One series per Listener (namespace is the Listener's).",
            ["namespace", "load_balancer", "listener", "reason"],
            registry=r,
        )
        # Listener key (ns/name) -> the label values of its one series.
        self._listener_series: dict[str, tuple[str, str, str, str]] = {}
        # LoadBalancer -> the nack reasons it has series for (removed with it).
        self._nack_reasons: dict[str, set[str]] = {}

    # ------------------------------------------------------------------ config server
    # `lb` is the LoadBalancer's key, `namespace/name`.

    def pushed(self, lb: str) -> None:
        self.snapshots_pushed_total.labels(*_split(lb)).inc()

    def acked(self, lb: str, seconds: float) -> None:
        self.acks_total.labels(*_split(lb)).inc()
        self.push_ack_seconds.labels(*_split(lb)).observe(seconds)

    def nacked(self, lb: str, reason: str) -> None:
        self._nack_reasons.setdefault(lb, set()).add(reason)
        self.nacks_total.labels(*_split(lb), reason).inc()

    def connected(self, lb: str, count: int) -> None:
        self.data_planes_connected.labels(*_split(lb)).set(count)
        if count:
            for reason in NACK_REASONS:
                self._nack_reasons.setdefault(lb, set()).add(reason)
                self.nacks_total.labels(*_split(lb), reason)  # created at 0, see NACK_REASONS

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
        self.propagation_seconds.labels(*_split(lb)).observe(seconds)

    def forgotten(self, lb: str) -> None:
        """A LoadBalancer was deleted: drop every series of it, so a cluster that creates
        and deletes LoadBalancers does not grow the exposition forever."""
        per_lb = (
            self.snapshots_pushed_total,
            self.acks_total,
            self.push_ack_seconds,
            self.data_planes_connected,
            self.propagation_seconds,
        )
        for metric in per_lb:
            with contextlib.suppress(KeyError):
                metric.remove(*_split(lb))
        for reason in self._nack_reasons.pop(lb, set()):
            with contextlib.suppress(KeyError):
                self.nacks_total.remove(*_split(lb), reason)

    # ------------------------------------------------------------------ status writer

    def listener_programmed(
        self, key: str, load_balancer: str, programmed: bool, reason: str
    ) -> None:
        """The Programmed condition of Listener `key` (`ns/name`) of LoadBalancer
        `load_balancer` (its name). A new reason or LoadBalancer replaces the old series,
        so an alert on `== 0` never sees a stale one."""
        namespace, _, name = key.partition("/")
        series = (namespace, load_balancer, name, reason)
        old = self._listener_series.get(key)
        if old is not None and old != series:
            self.listener_programmed_state.remove(*old)
        self._listener_series[key] = series
        self.listener_programmed_state.labels(*series).set(1 if programmed else 0)

    def keep_listeners(self, keys: Iterable[str]) -> None:
        """Drop the series of every Listener not in `keys` (deleted ones)."""
        kept = set(keys)
        for key in [k for k in self._listener_series if k not in kept]:
            self.listener_programmed_state.remove(*self._listener_series.pop(key))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type: OpenMetrics when `accept` (the
        scraper's Accept header) asks for it, else the Prometheus text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def _split(lb: str) -> tuple[str, str]:
    """`namespace/name` -> (namespace, name)."""
    namespace, _, name = lb.partition("/")
    return namespace, name
