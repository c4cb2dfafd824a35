"""One listener at run time: its socket, policy objects, backend groups and live connections.

A `ListenerRuntime` is what every `ClientSide` of that port talks to, through the
`tunnel.Site` interface: admission (admission.py's gate), routing a request to a backend
group (`routing.Router`: the default group and one per forwarding rule, group.py), counters,
and the end-of-connection and end-of-request hooks.
`update()` takes a new config for the same port in place: groups are kept by name (with
their endpoint states, health checks and pooled connections), so live connections are
untouched unless their backend or their group left, and then they drain. It must not
parse configs or decide whether a port is rebound; `runtime.py` does that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Callable
from typing import Any

from dataplane.access_log import AccessLog, RequestRecord
from dataplane.admission import Capacity, Gate
from dataplane.balancer import Balancer, EndpointState
from dataplane.deadlines import DeadlineWheel
from dataplane.group import DEFAULT, BackendGroup
from dataplane.metrics import Metrics, TrafficTotals
from dataplane.process_metrics import TlsFailures
from dataplane.rejection import Rejection
from dataplane.routing import Router
from dataplane.routing import Rule as RoutingRule
from dataplane.tls import CertificateSet, front_context, set_min_version
from dataplane.tls_stream import TlsAcceptor
from dataplane.tunnel import ClientSide, Site
from lbwire.snapshot import Listener, PathType, Protocol

log = logging.getLogger("wslb.listener")

BACKLOG = 4096
# (target, Host) pairs an access log's connections share (`logged_request`), and the
# longest pair shared: a query string with a token makes each pair distinct anyway.
SHARED_REQUESTS = 256
SHARED_REQUEST_LENGTH = 256


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
        # A dict, not a set: ~26 B less per connection (a set keeps a hash per entry and
        # grows its table earlier); insertion order is harmless.
        self.connections: dict[ClientSide, None] = {}
        self.empty = asyncio.Event()  # set while no connection is open
        self.empty.set()
        self.groups: dict[str, BackendGroup] = {}
        self._closing_groups: set[asyncio.Task[None]] = set()
        self.totals = TrafficTotals()
        self.server: asyncio.Server | None = None
        self.front: ssl.SSLContext | None = None  # the socket's TLS context (HTTPS)
        self.retired = False
        self.certificates = certificates
        self.wheel = DeadlineWheel(asyncio.get_running_loop())
        self._m_draining = metrics.connections_draining.labels(self.name)
        self.counts = metrics.connections_of(self.name)
        self.config = config
        self.bind_key = _bind_key(config)
        self._published: set[str] = set()
        self.request_counts = metrics.requests_of(self.name)
        # Pairs typed tuple[str, ...]: mypyc keeps a tuple[str, str] unboxed and would box
        # a new tuple per connection, sharing nothing.
        self._logged_requests: dict[tuple[str, ...], tuple[str, ...]] = {}
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
        # read by every plain HTTP request: plain attributes, not a walk through the config
        self.port = config.port
        self.forwarded = config.forwarded_headers.enabled
        self.connect_attempts = config.limits.connect_retries + 1
        self.gate: Gate = Gate(config, self.capacity, None if first else self.gate)
        self.keeps_heads = self.access_log is not None and config.access_log.enabled
        wanted: dict[str, Any] = {DEFAULT: None, **{rule.name: rule for rule in config.rules}}
        groups: dict[str, BackendGroup] = {}
        for name, rule in wanted.items():
            group = self.groups.get(name)
            if group is None:
                group = BackendGroup(name, self.name, self._health_changed)
            group.apply(config, rule)
            groups[name] = group
        gone = [group for name, group in self.groups.items() if name not in groups]
        self.groups = groups
        self.default = groups[DEFAULT]
        self.router = Router(
            [
                RoutingRule(
                    group=rule.name,
                    host=rule.match.host,
                    path=rule.match.path,
                    match="exact" if rule.match.path_type is PathType.EXACT else "prefix",
                )
                for rule in config.rules
            ],
            DEFAULT,
        )
        self.has_rules = bool(config.rules)
        for group in gone:
            self._close_group(group)
        self._publish_all_health()
        # Connections to endpoints or groups that left, or that now drain, drain.
        for connection in list(self.connections):
            state = connection.endpoint
            current = connection.group
            if current is None:
                continue
            if groups.get(current.name) is not current or (
                state is not None and current.should_drain(state)
            ):
                connection.drain(current.drain_timeout)

    def _close_group(self, group: BackendGroup) -> None:
        task = asyncio.get_running_loop().create_task(group.close())
        self._closing_groups.add(task)
        task.add_done_callback(self._closing_groups.discard)

    def _health_changed(self, group: BackendGroup, state: EndpointState) -> None:
        self._publish_all_health()

    def _publish_all_health(self) -> None:
        """One gauge per endpoint key: up when it is up in every group that has it (an
        endpoint in two groups is checked by each)."""
        up: dict[str, bool] = {}
        for group in self.groups.values():
            for state in group.endpoints.values():
                ok = state.ready and state.healthy and not state.draining
                up[state.key] = up.get(state.key, True) and ok
        for key in self._published - up.keys():
            with contextlib.suppress(KeyError):
                self.metrics.backend_healthy.remove(self.name, key)
        for key, ok in up.items():
            self.metrics.backend_healthy.labels(self.name, key).set(1 if ok else 0)
        self._published = set(up)

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

        def client() -> ClientSide:
            return ClientSide(self, loop)

        factory: Callable[[], asyncio.BaseProtocol] = client
        if ssl_context is not None:
            # TLS by dataplane.tls_stream over the plain transport, not uvloop's ssl=: one
            # read buffer per socket, TLS buffers bounded whatever the message size.
            timeout = self.config.limits.handshake_timeout_seconds
            failures = self.tls_failures
            factory = TlsAcceptor(
                ssl_context,
                client,
                timeout,
                None
                if failures is None
                else lambda peer: failures.observe(self.name, TimeoutError("timed out"), peer),
            )
        self.server = await loop.create_server(factory, sock=sock, backlog=BACKLOG)

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
        for group in self.groups.values():
            await group.close()
        for task in list(self._closing_groups):
            await task
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    # ------------------------------------------------------------------ per connection

    def admit(self, connection: ClientSide) -> Rejection | None:
        """Register a new connection; say why it must be refused, if it must."""
        connections = self.connections
        if not connections:
            self.empty.clear()
        connections[connection] = None
        self.capacity.active += 1
        if self.retired:
            return CLOSING
        gate = self.gate
        # The address is read from the socket only for an ACL (a conversion per read).
        client_ip = connection.client_ip if gate.acl.restricts else ""
        return gate.check(client_ip, len(connections), connection.accepted_at)

    def check_origin(self, values: list[str]) -> Rejection | None:
        return self.gate.origin(values)

    def logged_request(self, target: str, host: str) -> tuple[str, ...]:
        """(target, Host) for an open connection's access-log line, one shared pair per
        distinct value: a listener's sockets mostly share both, and a pair of their own
        was ~120 B per connection. At most SHARED_REQUESTS pairs of short values are
        shared, forgotten all at once when full (live connections keep theirs)."""
        pair: tuple[str, ...] = (target, host)
        shared = self._logged_requests.get(pair)
        if shared is not None:
            return shared
        if len(target) + len(host) <= SHARED_REQUEST_LENGTH:
            if len(self._logged_requests) >= SHARED_REQUESTS:
                self._logged_requests.clear()
            self._logged_requests[pair] = pair
        return pair

    def connection_ended(self, connection: ClientSide) -> None:
        """The end-of-connection hook: bookkeeping and metrics from what it did."""
        self.connections.pop(connection, None)
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
            self.counts.closed(
                relay.close_code,
                relay.closed_by or "unknown",
                connection.ended_at - relay.opened_at,
            )
        if connection.status and self.keeps_heads:
            # A tunnel, a refusal or a backend's own answer; not a client that left
            # before any answer (TCP probes), which would only be noise.
            self.access_log.record(connection.record())  # type: ignore[union-attr]

    def traffic(self) -> TrafficTotals:
        """Totals of closed connections plus the live ones, for the scrape collector."""
        totals = self.totals.copy()
        totals.connections = len(self.connections)
        backend: dict[str, int] = {}
        for group in self.groups.values():
            totals.pool_idle += len(group.pool)
            for key, state in group.endpoints.items():
                backend[key] = backend.get(key, 0) + state.active
        totals.backend_connections = backend
        for connection in self.connections:
            relay = connection.relay
            if relay is not None:
                totals.messages_c2b += relay.messages_c2b
                totals.messages_b2c += relay.messages_b2c
                totals.bytes_c2b += relay.bytes_c2b
                totals.bytes_b2c += relay.bytes_b2c
        return totals

    @property
    def endpoints(self) -> dict[str, EndpointState]:
        """The default group's endpoint states."""
        return self.default.endpoints

    @property
    def balancer(self) -> Balancer:
        """The default group's scheduler."""
        return self.default.balancer

    def route(self, host: str, target: str) -> BackendGroup:
        """The backend group for a request or an upgrade (host as http1 gives it)."""
        if not self.has_rules:
            return self.default
        return self.groups[self.router.route(host, target).group]

    def route_gone(self, group: BackendGroup) -> bool:
        """The group left the config (its connections drain)."""
        return self.groups.get(group.name) is not group

    def tunnel_opened(self, connection: ClientSide, handshake_seconds: float) -> None:
        self.counts.opened(handshake_seconds)

    def count_upgrade(self, status: int) -> None:
        self.counts.answered(status)

    def count_rejection(self, rejection: Rejection) -> None:
        self.counts.answered(rejection.status)
        self.metrics.rejections.labels(self.name, rejection.label).inc()

    def count_backend_failure(self, endpoint: EndpointState) -> None:
        self.metrics.backend_connect_failures.labels(self.name, endpoint.key).inc()

    def count_idle_timeout(self) -> None:
        self.metrics.idle_timeouts.labels(self.name).inc()

    def count_keepalive_timeout(self) -> None:
        self.metrics.keepalive_timeouts.labels(self.name).inc()

    def count_draining(self, delta: int) -> None:
        self._m_draining.inc(delta)

    def count_request(
        self, rule: str, method: bytes, status: int, duration: float, rejection: str
    ) -> None:
        """One plain HTTP request ended: counted by its answer's status class (status 0,
        the client left before any answer: no class to count it under), and its reason in
        the rejections whatever the status (client_gone included)."""
        if status:
            self.request_counts.add(rule, method, status, duration)
        if rejection:
            self.metrics.rejections.labels(self.name, rejection).inc()

    def log_request(self, record: RequestRecord) -> None:
        """One line per plain HTTP request in the access log."""
        if self.access_log is not None:
            self.access_log.record(record)

    def count_backend_error(self, group: str, kind: str) -> None:
        self.metrics.http_backend_errors.labels(self.name, group, kind).inc()


CLOSING = Rejection(503, "Listener is closing", [("Retry-After", "1")], label="draining")


def _site(listener: ListenerRuntime) -> Site:
    """mypy checks here that ListenerRuntime is the Site its connections expect."""
    return listener
