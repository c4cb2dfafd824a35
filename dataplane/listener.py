"""One listener at run time: its socket, policy objects, backends and live connections.

A `ListenerRuntime` is what every `ClientSide` of that port talks to, through the
`tunnel.Site` interface: admission (admission.py's gate), backend choice (sticky, then
the scheduler), counters, and the end-of-connection hook.
`update()` takes a new config for the same port in place, so live connections are
untouched unless their backend left, and then they drain. It must not parse configs or
decide whether a port is rebound; `runtime.py` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Collection
from typing import Any

from websockets.datastructures import Headers

from dataplane.access_log import AccessLog
from dataplane.admission import Capacity, Gate
from dataplane.balancer import Balancer, EndpointState, RequestInfo
from dataplane.deadlines import DeadlineWheel
from dataplane.handshake import Rejection
from dataplane.health import HealthChecker
from dataplane.metrics import Metrics, TrafficTotals, close_code_label
from dataplane.process_metrics import TlsFailures
from dataplane.relay import RelaySettings
from dataplane.sticky import StickyCookies
from dataplane.tls import CertificateSet, front_context, set_min_version
from dataplane.tunnel import ClientSide, Site
from lbwire.snapshot import Listener, Protocol, StickyMode

log = logging.getLogger("wslb.listener")

BACKLOG = 4096


def _bind_key(config: Listener) -> tuple[str, int, str]:
    """What only a new socket can change. TLS settings are not in it: they apply to new
    handshakes on the same socket, and live connections never notice."""
    return (config.address, config.port, config.protocol.value)


class ListenerRuntime:
    def __init__(
        self,
        config: Listener,
        capacity: Capacity,
        metrics: Metrics,
        certificates: CertificateSet | None,
        access_log: AccessLog | None = None,
        tls_failures: TlsFailures | None = None,
    ) -> None:
        self.name = config.name
        self.access_log = access_log
        self.tls_failures = tls_failures
        self.capacity = capacity
        self.metrics = metrics
        self.connections: set[ClientSide] = set()
        self.empty = asyncio.Event()  # set while no connection is open
        self.empty.set()
        self.endpoints: dict[str, EndpointState] = {}
        self.totals = TrafficTotals()
        self.server: asyncio.Server | None = None
        self.front: ssl.SSLContext | None = None  # the socket's TLS context (HTTPS)
        self.retired = False
        self.certificates = certificates
        self.health: HealthChecker | None = None
        self.wheel = DeadlineWheel(asyncio.get_running_loop())
        self._m_draining = metrics.connections_draining.labels(self.name)
        self._m_handshake = metrics.handshake_seconds.labels(self.name)
        self._m_duration = metrics.connection_seconds.labels(self.name)
        self._m_upgraded = metrics.upgrades.labels(self.name, "101")
        self._m_closes: dict[tuple[str, str], Any] = {}
        self.config = config
        self.bind_key = _bind_key(config)
        self._apply(config, certificates, first=True)

    # ------------------------------------------------------------------ config

    def needs_rebind(self, config: Listener) -> bool:
        return _bind_key(config) != self.bind_key

    def update(self, config: Listener, certificates: CertificateSet | None) -> None:
        """Take a new config for the same socket; drain connections whose backend left."""
        self._apply(config, certificates, first=False)

    def _apply(self, config: Listener, certificates: CertificateSet | None, first: bool) -> None:
        self.config = config
        self.certificates = certificates
        if self.front is not None and config.tls is not None:
            set_min_version(self.front, config.tls.min_version)
        self.scheme = "https" if config.protocol is Protocol.HTTPS else "http"
        self.gate: Gate = Gate(config, self.capacity, None if first else self.gate)
        limits = config.limits
        keepalive = config.keepalive
        self.relay_settings = RelaySettings(
            max_message=limits.max_message_bytes,
            idle_timeout=config.idle_timeout_seconds,
            keepalive_interval=keepalive.interval_seconds if keepalive.enabled else 0.0,
            keepalive_timeout=keepalive.timeout_seconds if keepalive.enabled else 0.0,
        )
        backends = config.backends
        fresh: dict[str, EndpointState] = {}
        for endpoint in backends.endpoints:
            state = self.endpoints.get(endpoint.key)
            if state is None:
                state = EndpointState.from_endpoint(endpoint)
            else:
                state.apply(endpoint)
            fresh[endpoint.key] = state
        removed = [state for key, state in self.endpoints.items() if key not in fresh]
        for state in removed:
            with contextlib.suppress(KeyError):
                self.metrics.backend_healthy.remove(self.name, state.key)
        self.endpoints = fresh
        self.sticky = StickyCookies(
            backends.sticky,
            secure=config.protocol is Protocol.HTTPS,
            endpoint_keys=self.endpoints,
        )
        self.sticky_rewrites_response = backends.sticky.mode is not StickyMode.NONE
        self.sticky_enabled = self.sticky.enabled
        self.keeps_heads = self.access_log is not None and config.access_log.enabled
        self.balancer = Balancer(backends, self.endpoints)
        # Keep one checker across swaps so a dead endpoint does not look healthy again.
        if self.health is None:
            self.health = HealthChecker(backends.health_check, self._health_changed, name=self.name)
        else:
            self.health.set_policy(backends.health_check)
        self.health.update(backends.endpoints)
        for state in self.endpoints.values():
            state.healthy = self.health.is_healthy(state.key)
        for state in self.endpoints.values():
            self._publish_health(state)
        # Connections to endpoints that left, or that now drain, drain; others stay.
        for connection in list(self.connections):
            state = connection.endpoint
            if state is not None and self.should_drain(state):
                connection.drain(config.drain_timeout_seconds)

    def _health_changed(self, key: str, healthy: bool) -> None:
        state = self.endpoints.get(key)
        if state is not None:
            state.healthy = healthy
            self._publish_health(state)

    def _publish_health(self, state: EndpointState) -> None:
        up = state.ready and state.healthy and not state.draining
        self.metrics.backend_healthy.labels(self.name, state.key).set(1 if up else 0)

    # ------------------------------------------------------------------ socket

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ssl_context = None
        if self.certificates is not None and self.config.tls is not None:
            ssl_context = front_context(
                lambda: self._current_certificates(),
                self.config.tls.min_version,
                self._tls_failed if self.tls_failures is not None else None,
            )
            self.front = ssl_context
        self.server = await loop.create_server(
            lambda: ClientSide(self, loop),
            sock=sock,
            ssl=ssl_context,
            ssl_handshake_timeout=self.config.limits.handshake_timeout_seconds
            if ssl_context
            else None,
            backlog=BACKLOG,
        )

    def _tls_failed(self, exc: ssl.SSLError) -> None:
        if self.tls_failures is not None:
            self.tls_failures.observe(self.name, exc)

    def _current_certificates(self) -> CertificateSet:
        assert self.certificates is not None
        return self.certificates

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    def retire(self, drain_timeout: float | None = None) -> None:
        """Leave the config: stop accepting, drain every connection."""
        self.retired = True
        self.stop_accepting()
        timeout = self.config.drain_timeout_seconds if drain_timeout is None else drain_timeout
        for connection in list(self.connections):
            connection.drain(timeout)

    async def close(self) -> None:
        self.wheel.close()
        if self.health is not None:
            await self.health.close()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # ------------------------------------------------------------------ per connection

    def admit(self, connection: ClientSide) -> Rejection | None:
        """Register a new connection; say why it must be refused, if it must."""
        self.connections.add(connection)
        self.empty.clear()
        self.capacity.active += 1
        if self.retired:
            return CLOSING
        return self.gate.check(connection.client_ip, len(self.connections), connection.accepted_at)

    def check_origin(self, values: list[str]) -> Rejection | None:
        return self.gate.origin(values)

    def connection_ended(self, connection: ClientSide) -> None:
        """The end-of-connection hook: bookkeeping and metrics from what it did."""
        self.connections.discard(connection)
        if not self.connections:
            self.empty.set()
        self.capacity.active -= 1
        if connection.draining:
            self.count_draining(-1)
        relay = connection.relay
        if relay is not None:
            totals = self.totals
            totals.messages_c2b += relay.messages_c2b
            totals.messages_b2c += relay.messages_b2c
            totals.bytes_c2b += relay.bytes_c2b
            totals.bytes_b2c += relay.bytes_b2c
            key = (close_code_label(relay.close_code), relay.closed_by or "unknown")
            child = self._m_closes.get(key)
            if child is None:
                # Cached (bounded: labels are classes): labels() locks and hashes each time.
                child = self._m_closes[key] = self.metrics.closes.labels(self.name, *key)
            child.inc()
            self._m_duration.observe(connection.ended_at - relay.opened_at)
        if connection.status and self.keeps_heads:
            # A tunnel, a refusal or a backend's own answer; not a client that left
            # before any answer (TCP probes), which would only be noise.
            self.access_log.record(connection.record())  # type: ignore[union-attr]

    def traffic(self) -> TrafficTotals:
        """Totals of closed connections plus the live ones, for the scrape collector."""
        totals = TrafficTotals(**vars(self.totals))
        totals.connections = len(self.connections)
        totals.backend_connections = {key: state.active for key, state in self.endpoints.items()}
        for connection in self.connections:
            relay = connection.relay
            if relay is not None:
                totals.messages_c2b += relay.messages_c2b
                totals.messages_b2c += relay.messages_b2c
                totals.bytes_c2b += relay.bytes_c2b
                totals.bytes_b2c += relay.bytes_b2c
        return totals

    def sticky_endpoint(self, headers: Headers) -> str | None:
        return self.sticky.endpoint_for(headers) if self.sticky.enabled else None

    def rewrite_request(self, headers: Headers) -> None:
        if self.sticky.enabled:
            self.sticky.rewrite_request(headers)

    def rewrite_response(self, endpoint_key: str, headers: Headers) -> None:
        self.sticky.rewrite_response(endpoint_key, headers)

    def choose(
        self, request: RequestInfo, tried: Collection[str], sticky_key: str | None
    ) -> EndpointState | None:
        if sticky_key is not None and sticky_key not in tried:
            state = self.endpoints.get(sticky_key)
            if state is not None and state.eligible:
                return state
        return self.balancer.pick(request, tried)

    def should_drain(self, endpoint: EndpointState) -> bool:
        return endpoint.draining or self.endpoints.get(endpoint.key) is not endpoint

    def tunnel_opened(self, connection: ClientSide, handshake_seconds: float) -> None:
        self._m_upgraded.inc()
        self._m_handshake.observe(handshake_seconds)

    def count_upgrade(self, status: int) -> None:
        self.metrics.upgrades.labels(self.name, str(status)).inc()

    def count_rejection(self, rejection: Rejection) -> None:
        self.metrics.upgrades.labels(self.name, str(rejection.status)).inc()
        self.metrics.rejections.labels(self.name, rejection.label).inc()

    def count_backend_failure(self, endpoint: EndpointState) -> None:
        self.metrics.backend_connect_failures.labels(self.name, endpoint.key).inc()

    def count_idle_timeout(self) -> None:
        self.metrics.idle_timeouts.labels(self.name).inc()

    def count_keepalive_timeout(self) -> None:
        self.metrics.keepalive_timeouts.labels(self.name).inc()

    def count_draining(self, delta: int) -> None:
        self._m_draining.inc(delta)


CLOSING = Rejection(503, "Listener is closing", [("Retry-After", "1")], label="draining")


def _site(listener: ListenerRuntime) -> Site:
    """mypy checks here that ListenerRuntime is the Site its connections expect."""
    return listener
