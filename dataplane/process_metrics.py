"""Collectors beside the traffic metrics: process, build, limits, TLS, certificates, channel.

Each is a prometheus_client Collector registered on a worker's own registry, read at scrape
time, so the parent's `--workers` merge (workers.py parses each worker's text and adds a
`worker` label) carries them like every other family: per-worker memory, CPU and fds come
out as `process_*{worker="N"}`. Limits are exported as the values *this process enforces*
(a worker's share of the load balancer's capacity), so `sum by (listener)` over workers is
the total in force and alerts can compare it with `connections_active` before any 503.
Nothing here is on the connection hot path except `TlsFailures.observe`, which is called on
a failed handshake only. This module must not decide admission or touch sockets.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID
from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dataplane.admission import share
from lbwire.build import BUILD_INFO, BUILD_INFO_HELP, build_labels
from lbwire.logs import rate_limit
from lbwire.snapshot import Certificate, Listener, LoadBalancerLimits, Snapshot

PREFIX = "wslb_dataplane"

tls_log = logging.getLogger("wslb.tls")
# A port scanner or a client with a stale CA fails thousands of handshakes: a few lines a
# minute say it is happening, the counter says how much.
rate_limit(tls_log, interval=60.0, burst=5)


# --------------------------------------------------------------------------- process, build


def register_process(registry: CollectorRegistry) -> None:
    """`process_*` (memory, CPU, fds, start time) and `python_gc_*` of this process."""
    ProcessCollector(registry=registry)
    GCCollector(registry=registry)


class BuildInfoCollector(Collector):
    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels if labels is not None else build_labels()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(BUILD_INFO, BUILD_INFO_HELP, labels=list(self.labels))
        family.add_metric(list(self.labels.values()), 1)
        yield family


# --------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class LimitsInForce:
    """The limits one process enforces: its share of the load balancer and each listener's."""

    load_balancer: LoadBalancerLimits
    listeners: Sequence[Listener]
    workers: int = 1
    index: int = 0  # this worker's number: which share of each limit it enforces

    @property
    def lb_max_connections(self) -> int:
        return share(self.load_balancer.max_connections, self.workers, self.index)

    def listener_share(self, total: int) -> int:
        """The same arithmetic as admission.Gate: this worker's part of a listener limit."""
        return share(total, self.workers, self.index)

    @property
    def lb_new_connections_per_second(self) -> float:
        return self.load_balancer.new_connections_per_second / max(1, self.workers)


_LISTENER_LIMITS: tuple[tuple[str, str, Callable[[Listener, LimitsInForce], float]], ...] = (
    (
        "listener_max_connections",
        "Connections this process admits on the listener before answering 503.",
        lambda c, f: f.listener_share(c.limits.max_connections),
    ),
    (
        "listener_max_new_connections_per_second",
        "New connections per second this process admits on the listener.",
        lambda c, f: f.listener_share(c.limits.new_connections_per_second),
    ),
    (
        "listener_max_message_bytes",
        "Largest WebSocket message relayed; a larger one is closed with 1009.",
        lambda c, f: c.limits.max_message_bytes,
    ),
    (
        "listener_handshake_timeout_seconds",
        "Time allowed from accept to a complete upgrade (TLS included).",
        lambda c, f: c.limits.handshake_timeout_seconds,
    ),
    (
        "listener_idle_timeout_seconds",
        "Tunnels with no frame either way for this long are closed with 1001.",
        lambda c, f: c.idle_timeout_seconds,
    ),
    (
        "listener_keepalive_interval_seconds",
        "Interval of the load balancer's pings to both peers; 0 when keepalive is off.",
        lambda c, f: c.keepalive.interval_seconds,
    ),
)


class LimitsCollector(Collector):
    """Every limit in force as a gauge; `source` returns None before a config is applied.

    A listener that left the config is simply absent at the next scrape: nothing to remove.
    """

    def __init__(self, source: Callable[[], LimitsInForce | None]) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        limits = self.source()
        if limits is None:
            return
        lb_max = GaugeMetricFamily(
            f"{PREFIX}_load_balancer_max_connections",
            "This process's share of the load balancer's connection capacity (its tier).",
            value=limits.lb_max_connections,
        )
        lb_rate = GaugeMetricFamily(
            f"{PREFIX}_load_balancer_max_new_connections_per_second",
            "This process's share of the load balancer's new-connection rate.",
            value=limits.lb_new_connections_per_second,
        )
        yield lb_max
        yield lb_rate
        for name, help_text, read in _LISTENER_LIMITS:
            family = GaugeMetricFamily(f"{PREFIX}_{name}", help_text, labels=["listener"])
            for listener in limits.listeners:
                family.add_metric([listener.name], float(read(listener, limits)))
            yield family


# --------------------------------------------------------------------------- TLS failures

# OpenSSL reason codes (ssl.SSLError.reason) folded into a bounded label set.
_TLS_REASONS = {
    "HTTP_REQUEST": "http_request",
    "HTTPS_PROXY_REQUEST": "http_request",
    "WRONG_VERSION_NUMBER": "not_tls",
    "UNKNOWN_PROTOCOL": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "UNSUPPORTED_PROTOCOL": "protocol_version",
    "VERSION_TOO_LOW": "protocol_version",
    "TLSV1_ALERT_PROTOCOL_VERSION": "protocol_version",
    "NO_PROTOCOLS_AVAILABLE": "protocol_version",
    "NO_SHARED_CIPHER": "no_shared_cipher",
    "NO_SUITABLE_SIGNATURE_ALGORITHM": "no_shared_cipher",
    "NO_SHARED_GROUPS": "no_shared_cipher",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_rejected",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_rejected",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_rejected",
    "TLSV1_ALERT_DECRYPT_ERROR": "certificate_rejected",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "alpn",
    "NO_APPLICATION_PROTOCOL": "alpn",
    "UNEXPECTED_EOF_WHILE_READING": "eof",
}

TLS_FAILURE_REASONS = frozenset(_TLS_REASONS.values()) | {
    "client_alert",
    "eof",
    "timeout",
    "reset",
    "other",
}


def tls_failure_reason(exc: BaseException) -> str:
    """A bounded label for why a server-side TLS handshake failed (see TLS_FAILURE_REASONS)."""
    if isinstance(exc, ssl.SSLError):
        reason = getattr(exc, "reason", None) or ""
        if reason in _TLS_REASONS:
            return _TLS_REASONS[reason]
        if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
            return "eof"
        if reason.startswith(("TLSV1_ALERT_", "SSLV3_ALERT_")):
            return "client_alert"
        return "other"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionAbortedError) and "taking longer" in str(exc):
        return "timeout"  # asyncio/uvloop's ssl_handshake_timeout
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, ConnectionError | EOFError):
        return "eof"
    return "other"


class TlsFailures(Collector):
    """Counts failed TLS handshakes by listener and reason; logs them, rate-limited."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}

    def observe(self, listener: str, exc: BaseException, peer: str | None = None) -> str:
        reason = tls_failure_reason(exc)
        key = (listener, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        tls_log.info(
            "TLS handshake failed on listener %s (%s) from %s: %s",
            listener,
            reason,
            peer or "unknown",
            exc or type(exc).__name__,
        )
        return reason

    def forget(self, listener: str) -> None:
        """A listener left the config: its series go away with it."""
        self.counts = {key: n for key, n in self.counts.items() if key[0] != listener}

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_tls_handshake_failures",
            "Server-side TLS handshakes that failed, by listener and reason.",
            labels=["listener", "reason"],
        )
        for (listener, reason), count in sorted(self.counts.items()):
            family.add_metric([listener, reason], count)
        yield family


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class CertificateExpiry:
    listener: str
    certificate: str  # first SNI name, else the subject CN, else "#<index>"
    not_after: float  # Unix time


def _certificate_label(cert: x509.Certificate, certificate: Certificate, index: int) -> str:
    if certificate.server_names:
        return certificate.server_names[0]
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        return str(names[0].value)
    return f"#{index}"


_expiry_cache: dict[str, float] = {}


def _not_after(pem: str) -> tuple[x509.Certificate, float]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert, cert.not_valid_after_utc.timestamp()


def certificate_expiries(listeners: Iterable[Listener]) -> list[CertificateExpiry]:
    """The leaf certificate's notAfter of every certificate of every HTTPS listener.

    Called at config apply, not at scrape; an unreadable PEM is skipped (the listener's own
    validation refuses it with a proper error).
    """
    out: list[CertificateExpiry] = []
    for listener in listeners:
        if listener.tls is None:
            continue
        for index, certificate in enumerate(listener.tls.certificates):
            try:
                cert, not_after = _not_after(certificate.certificate_pem)
            except ValueError:
                continue
            label = _certificate_label(cert, certificate, index)
            out.append(CertificateExpiry(listener.name, label, not_after))
    return out


class CertificateCollector(Collector):
    """`..._certificate_expiry_timestamp_seconds{listener, certificate}`.

    With a `source`, each scrape reads the listeners in force and re-parses certificates only
    when their PEM changed; without one, `update()` is called on every config apply.
    """

    def __init__(self, source: Callable[[], Sequence[Listener]] | None = None) -> None:
        self.source = source
        self.expiries: list[CertificateExpiry] = []
        self.digest = ""

    def update(self, listeners: Sequence[Listener]) -> None:
        pems = "".join(
            c.certificate_pem
            for listener in listeners
            if listener.tls
            for c in listener.tls.certificates
        )
        digest = hashlib.sha256(pems.encode()).hexdigest()
        if digest != self.digest:  # skip re-parsing when no certificate changed
            self.expiries = certificate_expiries(listeners)
            self.digest = digest

    def collect(self) -> Iterator[Metric]:
        if self.source is not None:
            self.update(self.source())
        family = GaugeMetricFamily(
            f"{PREFIX}_certificate_expiry_timestamp_seconds",
            "Unix time when a listener's certificate (the leaf of the chain) expires.",
            labels=["listener", "certificate"],
        )
        for expiry in self.expiries:
            family.add_metric([expiry.listener, expiry.certificate], expiry.not_after)
        yield family


# --------------------------------------------------------------------------- config channel


class ChannelState(Collector):
    """The config channel as the data plane sees it (controller mode only)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.is_connected = False
        self.last_ack: float | None = None
        self.last_nack: float | None = None
        self.connects = 0

    def connected(self, up: bool) -> None:
        if up and not self.is_connected:
            self.connects += 1
        self.is_connected = up

    def acked(self) -> None:
        self.last_ack = self.clock()

    def nacked(self) -> None:
        self.last_nack = self.clock()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            f"{PREFIX}_config_channel_connected",
            "1 while the config channel to the controller is up, else 0.",
            value=1 if self.is_connected else 0,
        )
        yield CounterMetricFamily(
            f"{PREFIX}_config_channel_connects",
            "Config channel sessions established (reconnects show as increments).",
            value=self.connects,
        )
        if self.last_ack is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_config_last_ack_timestamp_seconds",
                "Unix time of the last snapshot this data plane acked.",
                value=self.last_ack,
            )
        if self.last_nack is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_config_last_nack_timestamp_seconds",
                "Unix time of the last snapshot this data plane refused.",
                value=self.last_nack,
            )


# --------------------------------------------------------------------------- all together


@dataclass
class Observability:
    """The collectors one data-plane process registers; the runtime and channel feed them."""

    tls: TlsFailures
    certificates: CertificateCollector
    channel: ChannelState

    @classmethod
    def install(
        cls,
        registry: CollectorRegistry,
        snapshot: Callable[[], Snapshot | None],
        workers: int = 1,
        worker_index: int = 0,
        controller_mode: bool = False,
    ) -> Observability:
        """Register everything on a process's registry. `snapshot` returns the config in
        force (None before the first); limits and certificates are read from it at scrape
        time. The channel gauges only where a channel exists (a standalone data plane would
        otherwise look disconnected forever). Also turns off `_created` series for the whole
        process (a timestamp per counter that nothing reads doubles the series count)."""
        disable_created_metrics()  # type: ignore[no-untyped-call]

        def limits() -> LimitsInForce | None:
            current = snapshot()
            if current is None:
                return None
            return LimitsInForce(
                current.load_balancer.limits, current.listeners, workers, worker_index
            )

        def listeners() -> Sequence[Listener]:
            current = snapshot()
            return current.listeners if current is not None else ()

        register_process(registry)
        registry.register(BuildInfoCollector())
        registry.register(LimitsCollector(limits))
        made = cls(TlsFailures(), CertificateCollector(listeners), ChannelState())
        registry.register(made.tls)
        registry.register(made.certificates)
        if controller_mode:
            registry.register(made.channel)
        return made
