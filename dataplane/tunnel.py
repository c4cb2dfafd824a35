"""The asyncio adapter of one client connection: handshake, backend dial, byte moving.

`ClientSide` is the asyncio Protocol of the accepted socket; `BackendSide` the thin
Protocol of the backend socket. Before the 101 this module reads the client's head,
asks its listener (seen only through the `Site` interface below) for admission and the
backend group the request routes to, and dials one of the group's endpoints. A head that
is not a WebSocket upgrade goes to an `http_proxy.HttpSession`, which serves plain HTTP
on the connection and hands a later upgrade back here (`take_upgrade`). After the 101
every byte and every deadline goes through the connection core (`relay.Relay`): this
module writes what it returns, carries out its actions (close a TCP connection, count a
timeout) and files its next deadline on the listener's shared timing wheel. Flow control
(each side pauses the other's reading when its write buffer fills) is the only tunnel
rule that lives here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Generator
from enum import Enum
from typing import Any, Protocol, cast

from websockets.http11 import Request

from dataplane.access_log import RequestRecord
from dataplane.balancer import EndpointState, RequestInfo
from dataplane.counts import RequestCounts
from dataplane.deadlines import NOT_FILED, DeadlineWheel
from dataplane.group import BackendGroup
from dataplane.handshake import (
    HEAD_END,
    FastRequest,
    fast_request,
    parse_backend_head,
    parse_request,
    parse_status_line,
    render_backend_head,
    render_request,
    validate_upgrade,
)
from dataplane.http_proxy import HttpSession
from dataplane.rejection import Rejection
from dataplane.relay import (
    CLOSE_BACKEND,
    CLOSE_CLIENT,
    CLOSE_TIMEOUT,
    COUNT_IDLE_TIMEOUT,
    COUNT_KEEPALIVE_TIMEOUT,
    DEADLINE_MOVED,
    RESUME_CLIENT,
    ConnectionRecord,
    Relay,
    negotiated_extensions,
)
from dataplane.routing import normalise_host
from lbwire.snapshot import Listener

log = logging.getLogger("wslb.tunnel")

MAX_BACKEND_HEAD = 16 * 1024
REFUSED_HEAD_WAIT = 1.0  # how long a refused client may take to send its head

# A dial's create_connection coroutine, driven through its __await__ iterator: next()
# with a default ends it without raising StopIteration, whose traceback entry cost ~3k
# instructions per dial compiled.
Connecting = Generator[Any, None, tuple[asyncio.Transport, "BackendSide"]]
_CONNECTED: Any = object()  # next()'s default: the coroutine returned

HEADER_TOO_LARGE = Rejection(431, "Request header fields too large", label="header_too_large")
# A head that asks for a WebSocket upgrade (even a malformed one) takes the WebSocket
# path, so its answer stays the WebSocket validator's; any other head is plain HTTP.
_WS_UPGRADE = re.compile(rb"\r\nupgrade:[^\r\n]*websocket", re.IGNORECASE)


class Site(Protocol):
    """The listener as one of its connections sees it (listener.py implements it)."""

    name: str
    config: Listener
    scheme: str
    port: int  # config.port, config.forwarded_headers.enabled, limits.connect_retries + 1:
    forwarded: bool  # plain attributes for the HTTP request path
    connect_attempts: int
    wheel: DeadlineWheel
    keeps_heads: bool  # the access log wants request fields: keep each head
    request_counts: RequestCounts  # plain HTTP requests, counted by the session
    has_rules: bool  # routing needs the Host (else every request takes the default group)
    default: BackendGroup  # the group of the listener's own backends
    retired: bool

    def admit(self, connection: ClientSide) -> Rejection | None: ...
    def check_origin(self, values: list[str]) -> Rejection | None: ...
    def route(self, host: str, target: str) -> BackendGroup: ...
    def route_gone(self, group: BackendGroup) -> bool: ...
    def count_request(
        self, rule: str, method: bytes, status: int, duration: float, rejection: str
    ) -> None: ...
    def log_request(self, record: RequestRecord) -> None: ...
    def logged_request(self, target: str, host: str) -> tuple[str, ...]: ...
    def count_backend_error(self, group: str, kind: str) -> None: ...
    def tunnel_opened(self, connection: ClientSide, handshake_seconds: float) -> None: ...
    def count_upgrade(self, status: int) -> None: ...
    def count_rejection(self, rejection: Rejection) -> None: ...
    def count_backend_failure(self, endpoint: EndpointState) -> None: ...
    def count_idle_timeout(self) -> None: ...
    def count_keepalive_timeout(self) -> None: ...
    def count_draining(self, delta: int) -> None: ...
    def connection_ended(self, connection: ClientSide) -> None:
        """The one hook at a connection's end; `connection.record()` describes it."""


class State(Enum):
    HEAD = 1  # reading the client's request head
    CONNECTING = 2  # choosing and dialling a backend
    TUNNEL = 3  # relaying frames (the relay core decides)
    RELAY = 4  # relaying a backend's non-101 answer, then closing
    CLOSED = 5
    HTTP = 6  # plain HTTP requests: the HttpSession decides


_TUNNEL = State.TUNNEL  # a module global: one lookup fewer per chunk on the hot path


class ClientSide(asyncio.Protocol):
    """The accepted client connection and everything that happens to it."""

    # Slots: one of these lives per open connection; a dict per instance costs ~1 KiB.
    __slots__ = (
        "accepted_at",
        "backend",
        "data_received",
        "draining",
        "endpoint",
        "group",
        "head",
        "listener",
        "loop",
        "lost",
        "opening",
        "relay",
        "state",
        "transport",
        "wheel_index",
        "wheel_slot",
    )

    def __init__(self, listener: Site, loop: asyncio.AbstractEventLoop) -> None:
        # uvloop keeps what it finds here for the transport's life: the object itself (its
        # __call__ is the client feed), not a bound method of 72 bytes per connection.
        self.data_received: Callable[[bytes], None] = self  # type: ignore[assignment]
        self.listener = listener
        self.loop = loop  # passed in: get_running_loop() per connection shows in profiles
        self.state = State.HEAD
        self.transport: asyncio.Transport | None = None
        self.backend: BackendSide | None = None
        self.endpoint: EndpointState | None = None
        self.group: BackendGroup | None = None  # the group the last request routed to
        self.accepted_at = 0.0
        # What only the handshake, plain HTTP or the end needs (head bytes, early data,
        # admission, the dial, its deadline, a refusal, the HTTP session, the end time):
        # dropped when the tunnel opens, so an idle tunnel holds none of it (each field
        # here costs 8 B per connection).
        self.opening: _Opening | None = _Opening()
        # For the access log, only when it is on: the request head as received, or just
        # its (target, Host) when the fast path read them and nothing was forwarded, a pair
        # shared with the listener's other connections (a browser's head with its cookies
        # is kilobytes, held for the connection's life).
        self.head: bytes | tuple[str, ...] = b""
        self.relay: Relay | None = None
        self.wheel_slot = NOT_FILED  # the relay's deadline slot in listener.wheel
        self.wheel_index = 0  # and its place in that slot (the wheel keeps both)
        self.draining = False
        self.lost = False  # connection_lost ran

    # What lives in the opening (made again on demand), read and set as attributes.

    @property
    def http(self) -> HttpSession | None:
        """The session serving plain HTTP requests on this connection, if any."""
        opening = self.opening
        return None if opening is None else opening.http

    @http.setter
    def http(self, session: HttpSession | None) -> None:
        if session is not None or self.opening is not None:
            self._opening().http = session

    @property
    def dial(self) -> _Dial | None:
        """The dial and its attempt in progress (endpoint, socket, connect); dropped at
        the backend's answer."""
        opening = self.opening
        return None if opening is None else opening.dial

    @dial.setter
    def dial(self, dial: _Dial | None) -> None:
        if dial is not None or self.opening is not None:
            self._opening().dial = dial

    @property
    def peer(self) -> tuple[str, int] | None:
        """The client's address, kept only while plain HTTP is served (read per request);
        a tunnel reads it from the transport when needed: uvloop's TCP transport keeps the
        peer's sockaddr, also after close, and so does tls_stream's over it."""
        opening = self.opening
        return None if opening is None else opening.peer

    @peer.setter
    def peer(self, peer: tuple[str, int] | None) -> None:
        if peer is not None or self.opening is not None:
            self._opening().peer = peer

    @property
    def status(self) -> int:
        """The HTTP status the client got, 0 before any: 101 exactly when a tunnel opened
        (a relay exists), else what the opening noted (a refusal, a backend's answer)."""
        if self.relay is not None:
            return 101
        opening = self.opening
        return 0 if opening is None else opening.status

    @status.setter
    def status(self, status: int) -> None:
        if status != 101:
            self._opening().status = status

    @property
    def ended_at(self) -> float:
        """When the connection ended (loop time), 0 while it is open."""
        opening = self.opening
        return 0.0 if opening is None else opening.ended_at

    @property
    def client_ip(self) -> str:
        """The client's IP address (an IPv4-mapped IPv6 address as IPv4), "" if unknown."""
        return (self.peer or _peername(self.transport))[0]

    @property
    def client_port(self) -> int:
        return (self.peer or _peername(self.transport))[1]

    # ---------------------------------------------------------------- accept, head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.accepted_at = self.loop.time()
        opening = self._opening()
        admission = opening.admission = self.listener.admit(self)
        config = self.listener.config
        wait = min(
            config.limits.handshake_timeout_seconds, config.http.request_head_timeout_seconds
        )
        if admission is not None:
            # Refused anyway: do not hold a slot for the whole handshake timeout.
            wait = min(wait, REFUSED_HEAD_WAIT)
        opening.deadline = self.accepted_at + wait
        # Filed for the earliest deadline its next steps can set (the connect attempt's,
        # the close timer of a tunnel that closes at once): the later ones then ride on
        # this entry at no cost (DeadlineWheel.ensure); a connection still open when it
        # comes due is filed again for its own next deadline.
        first = min(wait, config.limits.connect_timeout_seconds, CLOSE_TIMEOUT)
        self.listener.wheel.add(self, self.accepted_at + first)

    def __call__(self, data: bytes) -> None:
        """Bytes from the client (this object is its transport's `data_received`)."""
        if self.state is _TUNNEL:
            # Hot path: one core call and one write per chunk (no asserts: they run).
            relay: Relay = self.relay  # type: ignore[assignment]
            out = relay.client_data(data, self.loop.time())
            if out:
                self.backend.transport.write(out)  # type: ignore[union-attr]
            if relay.pending:
                self._carry_out(relay)
            return
        if self.state is State.HTTP:
            self.http.client_data(data)  # type: ignore[union-attr]
        elif self.state is State.HEAD:
            self._head_data(data)
        elif self.state is State.CONNECTING:
            opening: _Opening = self.opening  # type: ignore[assignment]
            opening.pending += data
            if len(opening.pending) > self.listener.config.limits.max_header_bytes:
                # A client must wait for the 101 before sending frames (RFC 6455 §4.1).
                self._reject(
                    Rejection(400, "Data sent before the handshake completed", label="early_data")
                )

    def _head_data(self, data: bytes) -> None:
        opening: _Opening = self.opening  # type: ignore[assignment]  # HEAD: never None
        buffer: bytes | bytearray
        if opening.buffer:
            searched = max(0, len(opening.buffer) - 3)
            opening.buffer += data
            buffer = opening.buffer
        else:
            searched = 0
            buffer = data  # the usual case: the whole head in one read, no copy
        end = buffer.find(HEAD_END, searched)
        limit = self.listener.config.limits.max_header_bytes
        if end < 0:
            if buffer.find(b"\n\n", searched) >= 0:
                # A head ended by bare LFs: the HTTP reader refuses it (400) at once.
                opening.buffer = b""
                self._cancel_timer()
                if opening.admission is not None:
                    self._reject(opening.admission)
                else:
                    self._start_http(bytes(buffer))
                return
            if len(buffer) > limit:
                self._reject(HEADER_TOO_LARGE)
            elif buffer is data:
                opening.buffer = bytearray(data)
            return
        if end + 4 > limit:
            self._reject(HEADER_TOO_LARGE)
            return
        head = bytes(buffer[: end + 4]) if end + 4 < len(buffer) else bytes(buffer)
        opening.pending = buffer[end + 4 :] or b""
        opening.buffer = b""
        self._clear_deadline()  # the dial moves its entry; others unfile it
        self.state = State.CONNECTING
        try:
            self._handle_request(head)
        except Rejection as rejection:
            self._reject(rejection)

    def _head_timeout(self) -> None:
        if self.state is State.HEAD and self.opening is not None:
            if self.opening.admission is not None:
                self._reject(self.opening.admission)
            else:
                self._reject(
                    Rejection(408, "Timed out reading the request", label="handshake_timeout")
                )

    def _handle_request(self, head: bytes) -> None:
        admission = self.opening.admission if self.opening is not None else None
        if admission is not None:
            raise admission
        listener = self.listener
        if listener.config.http.redirect_to_https.enabled:
            self._start_http(head)  # the session answers requests and upgrades with 308
            return
        fast = fast_request(head)
        if fast is None and _WS_UPGRADE.search(head) is None:
            self._start_http(head)
            return
        self._handle_upgrade(head, fast)

    def _start_http(self, head: bytes) -> None:
        """Serve plain HTTP on this connection from `head` (and what followed it) on."""
        self.state = State.HTTP
        self.listener.wheel.discard(self)  # the session keeps its own deadlines
        if self.peer is None:
            # Read on every request (forwarded headers, scheduler, log): kept while plain
            # HTTP is served, which holds a session anyway.
            self.peer = _peername(self.transport)
        session = self.http = HttpSession(self, self.listener)
        opening = self.opening
        if opening is not None and opening.pending:
            data = head + opening.pending
            opening.pending = b""
        else:
            data = head
        session.client_data(data)

    def take_upgrade(self, head: bytes, rest: bytes) -> None:
        """A WebSocket upgrade after plain requests (called by the HttpSession): the
        WebSocket path continues with it and the bytes that followed."""
        self.http = None
        self.peer = None  # a tunnel reads it from the transport again
        self.state = State.CONNECTING
        self._opening().pending = rest or b""
        try:
            self._handle_upgrade(head, fast_request(head))
        except Rejection as rejection:
            self._reject(rejection)

    def end_http(self, linger: bool) -> None:
        """The HttpSession is done with the connection: close it once flushed; with
        `linger`, half-close first and read (and drop) what the client still sends for a
        moment, so the answer is not lost to a reset."""
        self.state = State.CLOSED
        self.http = None
        self._cancel_timer()
        transport = self.transport
        if linger and transport is not None and not transport.is_closing():
            if transport.can_write_eof():
                transport.write_eof()
            transport.resume_reading()
            self.loop.call_later(1.0, transport.close)
            self.loop.call_later(1.0 + CLOSE_TIMEOUT, self._abort_if_stuck)
            return
        self._finish()

    def _handle_upgrade(self, head: bytes, fast: FastRequest | None) -> None:
        listener = self.listener
        if listener.keeps_heads:
            # The fast path's strings when they are all the line needs; else a reference
            # to the head, no copy, parsed again on the log's writer thread.
            if fast is None or fast.forwarded:
                self.head = head
            else:
                self.head = listener.logged_request(fast.path, fast.host)
        request: Request | FastRequest
        if fast is None:
            request = parse_request(head)
            validate_upgrade(request)
            origins = request.headers.get_all("Origin")
        else:
            request = fast
            origins = fast.origins
        refused = listener.check_origin(origins)
        if refused is not None:
            raise refused
        host = ""
        if listener.has_rules:
            if isinstance(request, FastRequest):
                host = next(
                    (value.decode() for name, value in request.fields if name.lower() == b"host"),
                    "",
                )
            else:
                host = request.headers.get("Host", "")
        self.group = listener.route(normalise_host(host), request.path)
        self._start_dial(request)

    def _reject(self, rejection: Rejection) -> None:
        self.listener.count_rejection(rejection)
        self._opening().rejection = rejection
        self.status = rejection.status
        self.state = State.CLOSED
        self._cancel_timer()
        self._stop_dial()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(rejection.render())
            # Half-close: the client reads the answer, then the socket closes cleanly.
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(1.0, transport.close)
            self.loop.call_later(1.0 + CLOSE_TIMEOUT, self._abort_if_stuck)

    # ---------------------------------------------------------------- backend

    def _start_dial(self, request: Request | FastRequest) -> None:
        """Render the request for the backends, then try them one by one (callbacks and a
        deadline handle per attempt: no coroutine of ours runs per connection)."""
        listener = self.listener
        group = self.group
        assert group is not None
        sticky_key = None
        if group.sticky_enabled:
            sticky_key = group.sticky.endpoint_for(request.headers)
            group.sticky.rewrite_request(request.headers)
        client_ip = self.client_ip
        head = render_request(
            request,
            client_ip=client_ip,
            scheme=listener.scheme,
            port=listener.config.port,
            forwarded=listener.config.forwarded_headers.enabled,
        )
        info = RequestInfo(client_ip, request.path, request=request)
        self.dial = _Dial(info, sticky_key, head, listener.config.limits.connect_retries + 1)
        self._next_attempt()

    def _next_attempt(self) -> None:
        dial = self.dial
        if dial is None or self.state is not State.CONNECTING:
            return
        listener = self.listener
        endpoint = None
        if dial.attempts_left > 0 and self.group is not None:
            endpoint = self.group.choose(dial.info, dial.tried, dial.sticky_key)
        if endpoint is None:
            self.dial = None
            if not dial.tried:
                self._reject(
                    Rejection(
                        503, "No ready backend", [("Retry-After", "5")], label="no_ready_backend"
                    )
                )
            else:
                self._reject(
                    Rejection(502, "No backend could be reached", label="backend_unavailable")
                )
            return
        dial.attempts_left -= 1
        dial.tried.append(endpoint.key)
        endpoint.active += 1
        backend = BackendSide(self)
        dial.endpoint = endpoint
        dial.backend = backend
        timeout = listener.config.limits.connect_timeout_seconds
        self._set_deadline(self._opening(), self.loop.time() + timeout)
        # uvloop's create_connection is a coroutine; BackendSide drives it from the
        # callbacks of the future it waits on, without a Task (see dial_step).
        dial.connecting = self.loop.create_connection(
            backend.itself, endpoint.address, endpoint.port
        ).__await__()
        backend.dial_step()

    def _attempt_failed(self, backend: BackendSide, why: str) -> None:
        """This attempt is over (refused, timed out, closed, bad answer): try the next."""
        dial = self.dial
        endpoint = dial.endpoint if dial is not None and dial.backend is backend else None
        if endpoint is None:
            return  # a stale callback of an attempt already given up
        self._stop_dial(keep_context=True)
        self.listener.count_backend_failure(endpoint)
        log.debug("backend %s failed: %s", endpoint.key, why)
        self._next_attempt()

    def _stop_dial(self, keep_context: bool = False) -> None:
        """Give up the attempt in progress: its deadline, its connect, its socket."""
        self._clear_deadline()
        dial = self.dial
        if dial is None:
            return
        connecting = dial.connecting
        if connecting is not None:
            dial.connecting = None
            _cancel_connect(connecting)
        endpoint, backend = dial.endpoint, dial.backend
        dial.endpoint = dial.backend = None
        dial.answer = b""  # the next attempt's backend starts its answer afresh
        if endpoint is not None:
            endpoint.active -= 1
        if backend is not None:
            backend.abandon()
        if not keep_context:
            self.dial = None

    def backend_head(self, backend: BackendSide, head: bytes, rest: bytes) -> None:
        """The backend answered the upgrade with `head`, and `rest` came with it (called
        by BackendSide)."""
        dial = self.dial
        endpoint = dial.endpoint if dial is not None and dial.backend is backend else None
        if endpoint is None:
            return
        self.dial = None  # with its attempt: the connect is done, the socket is this one
        self._clear_deadline()  # the tunnel's deadline moves its entry
        if self.state is not State.CONNECTING:
            endpoint.active -= 1
            backend.abandon()
            return
        try:
            self._backend_answered(backend, endpoint, head, rest)
        except Exception as exc:  # never a hung client or a leaked backend socket
            log.warning("backend handshake failed on listener %s: %r", self.listener.name, exc)
            log.debug("backend handshake failure", exc_info=True)
            if self.state is State.CONNECTING:
                if self.endpoint is None:
                    endpoint.active -= 1
                backend.abandon()
                self._reject(Rejection(502, "Backend handshake failed", label="backend_invalid"))

    def _backend_answered(
        self, backend: BackendSide, endpoint: EndpointState, head: bytes, rest: bytes
    ) -> None:
        listener = self.listener
        group = self.group
        assert group is not None
        try:
            # A 101 is relayed unchanged: its headers are parsed only when sticky
            # sessions must rewrite them (a measurable share of each handshake).
            status = parse_status_line(head)
            answer = None
            if status != 101 or group.sticky_rewrites_response:
                answer = parse_backend_head(head)
        except ValueError:
            endpoint.active -= 1
            backend.abandon()
            listener.count_backend_failure(endpoint)
            self._reject(
                Rejection(502, "Backend sent an invalid response", label="backend_invalid")
            )
            return
        assert self.transport is not None
        self.backend = backend
        self.endpoint = endpoint
        self.status = status
        if answer is not None and status != 101:
            # Relay the backend's own answer as is, then close.
            endpoint.active -= 1
            self.endpoint = None
            listener.count_upgrade(answer.status)
            self.state = State.RELAY
            backend.attach()
            self.transport.write(head + rest)
            remaining = None if answer.content_length is None else answer.content_length - len(rest)
            opening = self._opening()
            opening.relay_remaining = remaining
            if remaining is not None and remaining <= 0:
                self._finish()
            else:
                timeout = listener.config.limits.handshake_timeout_seconds
                self._set_deadline(opening, self.loop.time() + timeout)
            return
        if answer is not None and group.sticky_rewrites_response:
            group.sticky.rewrite_response(endpoint.key, answer.headers)
            head = render_backend_head(answer)
        now = self.loop.time()
        relay = self.relay = Relay(
            group.relay_settings, now, extensions=negotiated_extensions(head)
        )
        self.state = State.TUNNEL
        backend.attach()
        listener.tunnel_opened(self, now - self.accepted_at)
        self.transport.write(head)
        listener.wheel.ensure(self, relay.next_deadline() or now)
        if rest:
            backend(rest)  # the backend's bytes that came with its 101
        handshake, self.opening = self.opening, None  # over (its deadline was cancelled)
        if handshake is not None and handshake.pending and self.state is State.TUNNEL:
            self(bytes(handshake.pending))
        if self.draining:
            relay.drain(now + group.drain_timeout)
            self._carry_out(relay)
        elif group.should_drain(endpoint) or listener.route_gone(group):
            self.drain(group.drain_timeout)

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend outside the tunnel's hot path (see BackendSide.__call__)."""
        if self.state is _TUNNEL:
            relay: Relay = self.relay  # type: ignore[assignment]
            out = relay.backend_data(data, self.loop.time())
            if out:
                self.transport.write(out)  # type: ignore[union-attr]
            if relay.pending:
                self._carry_out(relay)
        elif self.state is State.RELAY and self.transport is not None:
            opening = self.opening
            remaining = opening.relay_remaining if opening is not None else None
            if opening is not None and remaining is not None:
                data = data[:remaining]
                remaining -= len(data)
                opening.relay_remaining = remaining
            self.transport.write(data)
            if remaining is not None and remaining <= 0:
                self._finish()

    def backend_lost(self) -> None:
        """The backend's TCP connection ended (called by BackendSide)."""
        if self.state is State.RELAY:
            self._finish()
        elif self.state is State.TUNNEL and self.relay is not None:
            self.relay.backend_lost(self.loop.time())
            self._carry_out(self.relay)

    def backend_ended(self) -> bool:
        """The backend half-closed (called by BackendSide); True keeps its transport."""
        relay = self.relay
        if self.state is not State.TUNNEL or relay is None:
            return False
        keep = relay.backend_ended(self.loop.time())
        self._carry_out(relay)
        return keep

    # ---------------------------------------------------------------- the core's outputs

    def _carry_out(self, relay: Relay) -> None:
        """Write the core's own frames and do what it asks, in that order."""
        to_client, to_backend, actions = relay.take()
        transport = self.transport
        if to_client and transport is not None and not transport.is_closing():
            transport.write(b"".join(to_client))
        backend = self.backend.transport if self.backend is not None else None
        if to_backend and backend is not None and not backend.is_closing():
            backend.write(b"".join(to_backend))
        if actions & COUNT_IDLE_TIMEOUT:
            self.listener.count_idle_timeout()
        if actions & COUNT_KEEPALIVE_TIMEOUT:
            self.listener.count_keepalive_timeout()
        if actions & RESUME_CLIENT and transport is not None and not transport.is_closing():
            transport.resume_reading()
        if actions & (CLOSE_CLIENT | CLOSE_BACKEND):
            self._finish()
        elif actions & DEADLINE_MOVED and self.wheel_slot != NOT_FILED:
            deadline = relay.next_deadline()
            if deadline is not None:
                self.listener.wheel.ensure(self, deadline)

    def deadline_due(self, now: float) -> float | None:
        """The wheel's slot came due (see deadlines.py): run the core's deadlines, or
        the handshake's before the tunnel opens."""
        relay = self.relay
        if self.state is not State.TUNNEL or relay is None:
            return self._handshake_due(now)
        relay.tick(now)
        if relay.pending:
            self._carry_out(relay)
        if self.state is not State.TUNNEL:
            return None
        # A deadline at or before now is safe: the wheel files it after the slot it fires.
        return relay.next_deadline()

    def _set_deadline(self, opening: _Opening, when: float) -> None:
        """The handshake's one deadline (head, connect attempt, or relaying a refusal
        from the backend) on the listener's wheel: no loop timer per connection."""
        opening.deadline = when
        self.listener.wheel.ensure(self, when)

    def _handshake_due(self, now: float) -> float | None:
        opening = self.opening
        if opening is None or not opening.deadline:
            return None
        if now < opening.deadline:
            return opening.deadline  # filed in an earlier slot: wait on
        opening.deadline = 0.0
        state = self.state
        if state is State.HEAD:
            self._head_timeout()
        elif state is State.CONNECTING:
            dial = self.dial
            if dial is not None and dial.backend is not None:
                self._attempt_failed(dial.backend, "timed out")
        elif state is State.RELAY:
            self._finish()
        return None  # a next attempt filed its own deadline

    def _clear_deadline(self) -> None:
        """The handshake's deadline is off; its wheel entry stays (a wheel operation
        fewer): it comes due as a no-op, or the next deadline takes it over."""
        opening = self.opening
        if opening is not None:
            opening.deadline = 0.0

    def _cancel_timer(self) -> None:
        """Cancel the handshake's deadline and take the connection off the wheel (never
        called on a tunnel: the wheel holds its relay's deadline)."""
        self._clear_deadline()
        self.listener.wheel.discard(self)

    def _opening(self) -> _Opening:
        """The handshake's state (made again if asked for after the tunnel opened)."""
        opening = self.opening
        if opening is None:
            opening = self.opening = _Opening()
        return opening

    # ---------------------------------------------------------------- closing

    def close(self, code: int, reason: str) -> None:
        """The proxy closes the tunnel: Close frames to both peers at frame boundaries."""
        if self.state is State.HTTP:
            self._finish()  # shutdown: a request under way is cut
            return
        if self.state is not State.TUNNEL:
            if self.state in (State.HEAD, State.CONNECTING):
                self._reject(Rejection(503, "Load balancer is shutting down", label="shutdown"))
            return
        assert self.relay is not None
        self.relay.close(code, reason, self.loop.time())
        self._carry_out(self.relay)

    def drain(self, timeout: float) -> None:
        """Keep serving until `timeout` seconds from now, then close with 1001."""
        if self.draining or self.state is State.CLOSED:
            return
        self.draining = True
        self.listener.count_draining(+1)
        if self.state is State.HTTP and self.http is not None:
            self.http.drain()
        elif self.state is State.TUNNEL and self.relay is not None:
            self.relay.drain(self.loop.time() + timeout)
            self._carry_out(self.relay)
        # A handshake in progress finishes; its tunnel drains when it opens.

    def _finish(self) -> None:
        """Close both TCP connections (buffered writes are flushed first)."""
        if self.transport is not None and not self.transport.is_closing():
            # A client that never reads would keep close() waiting forever; with nothing
            # buffered close() completes at once and needs no guard (a timer saved).
            if self.transport.get_write_buffer_size():
                self.loop.call_later(CLOSE_TIMEOUT, self._abort_if_stuck)
            self.transport.close()
        if self.backend is not None:
            self.backend.abandon()

    def _abort_if_stuck(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = State.CLOSED
        self.lost = True
        self._opening().ended_at = self.loop.time()  # a tunnel's opening made again
        self.listener.wheel.discard(self)
        self._clear_deadline()
        if self.dial is not None:
            self._stop_dial()
        if self.http is not None:
            self.http.client_lost()
        relay = self.relay
        if state is State.TUNNEL and relay is not None:
            relay.client_lost()
            to_backend = relay.take()[1]
            backend = self.backend.transport if self.backend is not None else None
            if to_backend and backend is not None and not backend.is_closing():
                backend.write(b"".join(to_backend))
        if self.backend is not None:
            self.backend.abandon()
        if self.endpoint is not None:
            self.endpoint.active -= 1
        self.listener.connection_ended(self)
        # No reference cycle outlives the connection (itself as data_received, the
        # backend's link back): refcounting frees it at once instead of the cyclic GC,
        # which the data plane runs rarely (dataplane/cli.py's young-generation threshold).
        self.data_received = _ignore
        self.backend = None

    def record(self) -> ConnectionRecord:
        """What happened on this connection, complete once it ended (for access logs).
        The request's fields stay in the kept head: the log's writer reads them (or the
        fast path's target and Host, when that is all it kept)."""
        relay = self.relay
        now = self.loop.time()
        end = self.ended_at or now
        listener = self.listener
        client_ip, client_port = self.peer or _peername(self.transport)
        head = self.head
        forwarded = client_ip if head and listener.forwarded else ""
        backend = self.endpoint.key if self.endpoint is not None else ""
        refused = self.opening.rejection if self.opening is not None else None
        rejection = refused.label if refused is not None else ""
        started = time.time() - (now - self.accepted_at)
        if relay is None:  # refused, or the backend's own answer: nothing was relayed
            handshake = 0.0
            c2b = b2c = messages_c2b = messages_b2c = code = 0
            closed_by = ""
        else:
            handshake = relay.opened_at - self.accepted_at
            c2b, b2c = relay.bytes_c2b, relay.bytes_b2c
            messages_c2b, messages_b2c = relay.messages_c2b, relay.messages_b2c
            code, closed_by = relay.close_code, relay.closed_by or "unknown"
        if isinstance(head, tuple):  # read by the fast path: nothing left to parse
            target, host = head
            method, chain, kept, appended = "GET", forwarded, b"", ""
        else:  # the writer reads the request's fields from the kept head
            method = host = target = chain = ""
            kept, appended = head, forwarded
        return ConnectionRecord(
            client_ip,
            client_port,
            listener.name,
            backend,
            self.status,
            rejection,
            started,
            end - self.accepted_at,
            handshake,
            c2b,
            b2c,
            messages_c2b,
            messages_b2c,
            code,
            closed_by,
            method,
            host,
            target,
            chain,
            kept,
            appended,
        )

    # ---------------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        http = self.http if self.state is State.HTTP else None
        if http is not None:
            http.client_paused()
        elif self.backend is not None and self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        http = self.http if self.state is State.HTTP else None
        if http is not None:
            http.client_resumed()
        elif self.backend is not None and self.backend.transport is not None:
            self.backend.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.state is State.HTTP and self.http is not None:
            return True if self.http.client_eof() else None
        if self.state is State.TUNNEL and self.relay is not None and self.relay.client_ended():
            # The client closed cleanly and half-closed: keep writing so the backend's
            # Close reply reaches it (bounded by the close timer).
            return True
        return None  # close our side too; connection_lost does the rest


class BackendSide(asyncio.Protocol):
    """The backend connection: collects the answer head, then hands bytes to ClientSide."""

    __slots__ = (
        "answered",
        "attached",
        "client",
        "data_received",
        "lost",
        "transport",
    )

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.answered = False  # the head of the answer went to the client side
        self.attached = False  # the tunnel opened: bytes go to its relay
        self.lost = False
        # uvloop calls what it finds here; after the 101 this object itself (its __call__
        # is the backend feed, see attach): no bound method kept per connection.
        self.data_received: Callable[[bytes], None] = self._answer_data  # type: ignore[assignment]

    def __call__(self, data: bytes) -> None:
        """Bytes from the backend once attached: the tunnel's hot path here, one Python
        call per chunk (the rare states go through ClientSide.backend_data)."""
        client = self.client
        if client.state is _TUNNEL:
            relay: Relay = client.relay  # type: ignore[assignment]
            out = relay.backend_data(data, client.loop.time())
            if out:
                client.transport.write(out)  # type: ignore[union-attr]
            if relay.pending:
                client._carry_out(relay)
        else:
            client.backend_data(data)

    def itself(self) -> BackendSide:
        """Protocol factory for create_connection: this very instance."""
        return self

    def dial_step(self, _waited: object = None) -> None:
        """Drive the dial's create_connection coroutine one step, as a Task would: run
        it until it waits on a future, and come back here when that future is done (a
        Task per dial, its scheduling and its done callback cost more than the dial's own
        Python). Then send the request, or report the failure."""
        client = self.client
        dial = client.dial
        if dial is None or dial.backend is not self or dial.connecting is None:
            # The attempt was given up (_stop_dial closed its coroutine); uvloop may still
            # have set an exception on the waiter: read it, or asyncio logs it at GC.
            if isinstance(_waited, asyncio.Future) and not _waited.cancelled():
                _waited.exception()
            return
        connecting = dial.connecting
        try:
            waiter = next(connecting, _CONNECTED)
        except Exception as exc:
            dial.connecting = None
            client._attempt_failed(self, repr(exc))
            return
        if waiter is _CONNECTED:
            dial.connecting = None  # done: not kept while the backend answers
            if self.transport is not None:
                self.transport.write(dial.head)
            return
        cast(asyncio.Future[None], waiter).add_done_callback(self.dial_step)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def _answer_data(self, data: bytes) -> None:
        if self.attached:
            self(data)
            return
        dial = self.client.dial
        if self.answered or dial is None or dial.backend is not self:
            return  # an attempt given up (its head went on, or it was stopped): dropped
        # The answer's head is collected in the dial (dropped at the 101), not here: 8
        # bytes fewer in each tunnel's backend protocol.
        answer = dial.answer + data if dial.answer else data
        end = answer.find(HEAD_END)
        if end >= 0:
            dial.answer = b""
            self.answered = True
            self.client.backend_head(self, bytes(answer[: end + 4]), bytes(answer[end + 4 :]))
        elif len(answer) > MAX_BACKEND_HEAD:
            self.client._attempt_failed(self, "response head too large")
        else:
            dial.answer = answer if isinstance(answer, bytearray) else bytearray(answer)

    def attach(self) -> None:
        """From now on bytes go to the client side (through this object's __call__)."""
        self.attached = True
        self.data_received = self  # __call__: the backend feed
        if self.transport is not None:
            self.transport.set_protocol(self)  # uvloop reads data_received again

    def eof_received(self) -> bool | None:
        if self.attached and self.client.backend is self and self.client.backend_ended():
            return True
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.data_received = _ignore  # no cycle through itself once closed
        if not self.answered:
            self.client._attempt_failed(self, "closed before answering")
        elif self.client.backend is self:
            self.client.backend_lost()

    def pause_writing(self) -> None:
        transport = self.client.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.client.transport
        if transport is not None:
            transport.resume_reading()

    def abandon(self) -> None:
        """Close this backend connection (flushing what is buffered, with a bound)."""
        if self.transport is not None and not self.transport.is_closing():
            if self.transport.get_write_buffer_size():
                self.client.loop.call_later(CLOSE_TIMEOUT, self._abort_if_stuck)
            self.transport.close()

    def _abort_if_stuck(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()


class _Opening:
    """What a connection needs only until its tunnel opens (or while it is not one)."""

    __slots__ = (
        "admission",
        "buffer",
        "deadline",
        "dial",
        "ended_at",
        "http",
        "peer",
        "pending",
        "rejection",
        "relay_remaining",
        "status",
    )

    def __init__(self) -> None:
        # Head bytes of a head split over reads, and client bytes that came before the
        # 101: both usually empty, and then the shared b"" (an empty bytearray is 56 B).
        self.buffer: bytes | bytearray = b""
        self.pending: bytes | bytearray = b""
        self.admission: Rejection | None = None
        self.relay_remaining: int | None = None  # RELAY: bytes of the answer still to go
        self.deadline = 0.0  # the handshake's deadline on the wheel (loop time), 0: none
        self.rejection: Rejection | None = None  # what the client was answered, if refused
        self.dial: _Dial | None = None
        self.http: HttpSession | None = None  # serving plain HTTP requests
        self.peer: tuple[str, int] | None = None  # kept while plain HTTP is served
        self.ended_at = 0.0  # loop time; at the end a tunnel gets a new opening for it
        self.status = 0  # the HTTP status the client got, if not a 101


def _ignore(data: bytes) -> None:
    """A closed connection's data_received (refers to nothing: no cycle)."""


def _peername(transport: asyncio.BaseTransport | None) -> tuple[str, int]:
    """The transport's peer as (ip, port); IPv4-mapped IPv6 as IPv4; ("", 0) if unknown."""
    peer = transport.get_extra_info("peername") if transport is not None else None
    if not peer:
        return ("", 0)
    ip = str(peer[0])
    return (ip[7:] if ip.startswith("::ffff:") else ip, int(peer[1]))


class _Dial:
    """What every attempt of one connection's dial needs, and the attempt in progress;
    dropped once a backend answers."""

    __slots__ = (
        "answer",
        "attempts_left",
        "backend",
        "connecting",
        "endpoint",
        "head",
        "info",
        "sticky_key",
        "tried",
    )

    def __init__(
        self, info: RequestInfo, sticky_key: str | None, head: bytes, attempts: int
    ) -> None:
        self.info = info
        self.sticky_key = sticky_key
        self.answer: bytes | bytearray = b""  # the backend's answer until its head ends
        self.head = head
        self.attempts_left = attempts
        self.tried: list[str] = []
        # The attempt in progress: its endpoint, its socket's protocol, its connect.
        self.endpoint: EndpointState | None = None
        self.backend: BackendSide | None = None
        self.connecting: Connecting | None = None


def _cancel_connect(connecting: Connecting) -> None:
    """Stop a dial's create_connection where it waits, as cancelling its Task would:
    uvloop closes the socket it opened (its `except BaseException` path)."""
    try:
        connecting.throw(asyncio.CancelledError())
    except BaseException:  # noqa: S110  # what it raises is the cancellation itself
        pass
