"""Every Prometheus metric of the data plane, with its help text, in one place.

Names follow `wslb_dataplane_<thing>_<unit>`. Labels are bounded: listener names,
backend addresses, HTTP status codes, close-code classes; never a client address.
Per-message counts are not incremented on the hot path: connections keep plain integer
counters and a collector sums them at scrape time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dataplane.counts import (
    DURATION_BUCKETS,
    HANDSHAKE_BUCKETS,
    REQUEST_BUCKETS,
    ConnectionCounts,
    RequestCounts,
    TrafficTotals,
    close_code_label,
    folded_label,
    method_class,
)

__all__ = [  # the plain counters are counts.py's; their users import them from here too
    "DURATION_BUCKETS",
    "HANDSHAKE_BUCKETS",
    "REQUEST_BUCKETS",
    "ConnectionCounts",
    "Metrics",
    "RequestCounts",
    "TrafficTotals",
    "close_code_label",
    "method_class",
]

PREFIX = "wslb_dataplane"


class TrafficCollector(Collector):
    """Reads message, byte and open-connection counts at scrape time; `source` yields
    (listener, totals). Nothing on a connection's path touches a metric object for them."""

    def __init__(self, source: Callable[[], Iterable[tuple[str, TrafficTotals]]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            f"{PREFIX}_messages",
            "WebSocket messages relayed, by listener and direction.",
            labels=["listener", "direction"],
        )
        data = CounterMetricFamily(
            f"{PREFIX}_bytes",
            "Bytes relayed after the upgrade (frames, headers included), by direction.",
            labels=["listener", "direction"],
        )
        active = GaugeMetricFamily(
            f"{PREFIX}_connections_active",
            "Client connections currently open (handshaking or tunnelling).",
            labels=["listener"],
        )
        backend_active = GaugeMetricFamily(
            f"{PREFIX}_backend_connections_active",
            "Connections open (or being opened) to each backend.",
            labels=["listener", "backend"],
        )
        pool = GaugeMetricFamily(
            f"{PREFIX}_http_pool_idle_connections",
            "Idle HTTP backend connections kept for reuse, over every group of a listener.",
            labels=["listener"],
        )
        for listener, totals in self._source():
            active.add_metric([listener], totals.connections)
            pool.add_metric([listener], totals.pool_idle)
            for backend, count in totals.backend_connections.items():
                backend_active.add_metric([listener, backend], count)
            messages.add_metric([listener, "client_to_backend"], totals.messages_c2b)
            messages.add_metric([listener, "backend_to_client"], totals.messages_b2c)
            data.add_metric([listener, "client_to_backend"], totals.bytes_c2b)
            data.add_metric([listener, "backend_to_client"], totals.bytes_b2c)
        yield messages
        yield data
        yield active
        yield backend_active
        yield pool


def _cumulative(bounds: tuple[float, ...], slots: list[int]) -> list[tuple[str, float]]:
    """Prometheus histogram buckets (cumulative, +Inf last) from per-slot counts."""
    out: list[tuple[str, float]] = []
    total = 0
    labels = [*(str(float(bound)) for bound in bounds), "+Inf"]
    for label, count in zip(labels, list(slots), strict=True):
        total += count
        out.append((label, total))
    return out


class RequestCollector(Collector):
    """The HTTP request counter and duration histogram, read from every listener's
    `RequestCounts` at scrape time."""

    def __init__(self, source: dict[str, RequestCounts]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            f"{PREFIX}_http_requests",
            "Plain HTTP requests answered, by rule (default: no rule), method and status class.",
            labels=["listener", "rule", "method", "code"],
        )
        seconds = HistogramMetricFamily(
            f"{PREFIX}_http_request_duration_seconds",
            "From a plain HTTP request's head to the end of its answer.",
            labels=["listener", "rule"],
        )
        for listener, counts in list(self._source.items()):
            merged: dict[tuple[str, str, int], int] = {}
            for (rule, method, status_class), count in list(counts.requests.items()):
                key = (rule, method_class(method), status_class)
                merged[key] = merged.get(key, 0) + count
            for (rule, method_label, status_class), count in sorted(merged.items()):
                requests.add_metric([listener, rule, method_label, f"{status_class}xx"], count)
            for rule, slots in list(counts.buckets.items()):
                cumulative = _cumulative(REQUEST_BUCKETS, slots)
                seconds.add_metric([listener, rule], cumulative, counts.sums.get(rule, 0.0))
        yield requests
        yield seconds


class ConnectionCollector(Collector):
    """Upgrades, closes and the handshake and connection duration histograms, read from
    every listener's `ConnectionCounts` at scrape time."""

    def __init__(self, source: dict[str, ConnectionCounts]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        upgrades = CounterMetricFamily(
            f"{PREFIX}_upgrades",
            "Upgrade requests by the HTTP status answered to the client (101 = tunnelled).",
            labels=["listener", "code"],
        )
        handshake = HistogramMetricFamily(
            f"{PREFIX}_handshake_duration_seconds",
            "From accepting the TCP connection to relaying the backend's 101.",
            labels=["listener"],
        )
        duration = HistogramMetricFamily(
            f"{PREFIX}_connection_duration_seconds",
            "Lifetime of tunnelled WebSocket connections, from the 101 to the close.",
            labels=["listener"],
        )
        closes = CounterMetricFamily(
            f"{PREFIX}_closes",
            "Closed tunnels by close code and by who closed first (client, backend, proxy).",
            labels=["listener", "code", "initiator"],
        )
        for listener, counts in list(self._source.items()):
            # 101 and both histograms from the listener's start, zero until used (as
            # their labelled children were); other statuses and closes once they happen
            statuses = {101: 0, **counts.upgrades}
            for status, count in sorted(statuses.items()):
                upgrades.add_metric([listener, str(status)], count)
            handshake.add_metric(
                [listener], _cumulative(HANDSHAKE_BUCKETS, counts.handshakes), counts.handshake_sum
            )
            duration.add_metric(
                [listener], _cumulative(DURATION_BUCKETS, counts.durations), counts.duration_sum
            )
            named = [
                ((folded_label(folded), initiator), count)
                for (folded, initiator), count in counts.closes.items()
            ]
            for (code, initiator), count in sorted(named):
                closes.add_metric([listener, code, initiator], count)
        yield upgrades
        yield handshake
        yield duration
        yield closes


class Metrics:
    """One registry per data-plane process (tests make their own)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.connections_draining = Gauge(
            f"{PREFIX}_connections_draining",
            "Connections whose listener or backend left the config, waiting to close.",
            ["listener"],
            registry=r,
        )
        self.rejections = Counter(
            f"{PREFIX}_rejections",
            "Requests refused by the load balancer itself, by reason.",
            ["listener", "reason"],
            registry=r,
        )
        # Upgrades, closes and the handshake and connection durations: integers per
        # listener (`ConnectionCounts`), read at scrape time.
        self.connection_counts: dict[str, ConnectionCounts] = {}
        r.register(ConnectionCollector(self.connection_counts))
        self.idle_timeouts = Counter(
            f"{PREFIX}_idle_timeouts",
            "Tunnels closed after idleTimeoutSeconds without a frame in either direction.",
            ["listener"],
            registry=r,
        )
        self.keepalive_timeouts = Counter(
            f"{PREFIX}_keepalive_timeouts",
            "Tunnels closed with 1011 because a peer stopped answering keepalive pings.",
            ["listener"],
            registry=r,
        )
        self.backend_connect_failures = Counter(
            f"{PREFIX}_backend_connect_failures",
            "Failed attempts to open a backend connection or get its answer.",
            ["listener", "backend"],
            registry=r,
        )
        self.backend_healthy = Gauge(
            f"{PREFIX}_backend_healthy",
            "1 when the backend passes health checks and is ready, else 0.",
            ["listener", "backend"],
            registry=r,
        )
        # The request counter and duration histogram: integers per listener, read at
        # scrape time (a Prometheus child's lock and label lookup per request cost more
        # than the rest of the bookkeeping of a request).
        self.request_counts: dict[str, RequestCounts] = {}
        r.register(RequestCollector(self.request_counts))
        self.http_backend_errors = Counter(
            f"{PREFIX}_http_backend_errors",
            "Backend failures on plain HTTP requests (connect, reset, timeout, invalid).",
            ["listener", "rule", "kind"],
            registry=r,
        )
        self.config_reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Attempts to apply a new config, by result (applied, rejected).",
            ["result"],
            registry=r,
        )
        self.config_info = Gauge(
            f"{PREFIX}_config_info",
            "Always 1; the labels carry the applied config version and digest prefix.",
            ["version", "digest"],
            registry=r,
        )
        self.config_applied_timestamp = Gauge(
            f"{PREFIX}_config_last_applied_timestamp_seconds",
            "Unix time when the current config was applied.",
            registry=r,
        )
        self.ready = Gauge(
            f"{PREFIX}_ready",
            "1 when /readyz answers 200.",
            registry=r,
        )

    def forget_listener(self, name: str) -> None:
        """Drop every series of a listener that left the config, so its series all go
        together (the traffic collector stops reporting it at the same moment)."""
        for metric in (
            self.connections_draining,
            self.rejections,
            self.idle_timeouts,
            self.keepalive_timeouts,
            self.backend_connect_failures,
            self.backend_healthy,
            self.http_backend_errors,
        ):
            for labels in list(metric._metrics):  # the children, keyed by label values
                if labels[0] == name:
                    metric.remove(*labels)
        self.request_counts.pop(name, None)
        self.connection_counts.pop(name, None)

    def requests_of(self, listener: str) -> RequestCounts:
        """The request counts of a listener (kept across its config updates)."""
        counts = self.request_counts.get(listener)
        if counts is None:
            counts = self.request_counts[listener] = RequestCounts()
        return counts

    def connections_of(self, listener: str) -> ConnectionCounts:
        """The connection counts of a listener (kept across its config updates)."""
        counts = self.connection_counts.get(listener)
        if counts is None:
            counts = self.connection_counts[listener] = ConnectionCounts()
        return counts

    def watch_traffic(self, source: Callable[[], Iterable[tuple[str, TrafficTotals]]]) -> None:
        self.registry.register(TrafficCollector(source))
