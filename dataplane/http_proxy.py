"""Plain HTTP/1.1 proxying on a client connection: the adapter around `http1`.

`ClientSide` (tunnel.py) hands a connection here when its first request is not a
WebSocket upgrade. An `HttpSession` then owns the client's side of HTTP: it feeds the
client's bytes to `http1.RequestReader`, answers pipelined requests one at a time and in
order, sends each to a backend of the group its route names (a pooled idle connection
first, else a new one), relays the answer, and keeps the client connection alive
between requests within its limits. A later request that is a WebSocket upgrade goes
back to `ClientSide`, which continues with today's WebSocket path.

Bodies are streamed both ways, never held whole: when one side's write buffer fills,
the other side stops being read (asyncio's pause_writing/pause_reading). The only bytes
kept are a retry's replay (at most REPLAY_LIMIT of a request body) and pipelined input
read ahead (reading pauses past QUEUE_LIMIT).

Retries: a request whose backend fails before a byte of its answer arrives is sent to
another endpoint of the group when nothing of it reached the old one (connect failure or
connect timeout, any method) or when its method is idempotent (a reused or new
connection reset or closed before answering); and only while its body so far is within
REPLAY_LIMIT. Otherwise the client gets 502 (503 when no endpoint is ready at all).

A backend that stops taking a request body is bounded too: with no progress for
responseHeadTimeoutSeconds while the body waits on it, the client gets 504. A client that
stops sending its body (a slow POST) is bounded by requestBodyTimeoutSeconds, the longest
gap between two reads of the body while the client is being read (a client paused by flow
control is waiting on the backend, not the other way round): 408, its backend dropped.
Before a body with Expect: 100-continue the wait is the backend's (a response head's bound).

It must not parse HTTP itself (http1.py), route (routing.py) or choose endpoints
(group.py); metrics and the access log are the listener's (`HttpSite.count_request`,
`HttpSite.log_request`).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import socket
import sys
import termios
import time
from collections.abc import Callable
from typing import Protocol, cast

from websockets.datastructures import Headers

from dataplane.access_log import RequestRecord
from dataplane.balancer import EndpointState, RequestInfo
from dataplane.counts import REQUEST_BUCKETS, RequestCounts, bucket
from dataplane.group import BackendGroup
from dataplane.handshake import Rejection
from dataplane.http1 import (
    LAST_CHUNK,
    Body,
    EndOfMessage,
    Framing,
    Informational,
    RequestEvent,
    RequestHead,
    RequestReader,
    ResponseEvent,
    ResponseHead,
    ResponseReader,
    Upgrade,
    frame_chunk,
)
from lbwire.snapshot import Listener

log = logging.getLogger("wslb.http")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
REPLAY_LIMIT = 64 * 1024
"""Request body bytes kept for a retry: a larger body is not retried (502), so no request
costs more than this much memory for the sake of retrying it."""
QUEUE_LIMIT = 64 * 1024
"""Bytes read ahead of the request being answered (pipelined requests, or body bytes
waiting for a backend connection); past it the client is not read until they are sent."""
QUEUE_EVENTS = 64
"""Pipelined requests read ahead of the one being answered, at most (each holds its head)."""
CLOSE_TIMEOUT = 5.0
STALL_PROBE = 1.0
"""While a backend takes no request body bytes, how often the session looks again for
progress (_send_mark): often enough to time a stall closely, rare enough to cost nothing."""
TCP_INFO: int | None = getattr(socket, "TCP_INFO", None)  # Linux
ACKED_AT = 120  # struct tcp_info's tcpi_bytes_acked (Linux 4.1 on): 8 bytes, native order
TCP_CLOSE = 7  # tcpi_state (the first byte) of a connection the peer reset
TCP_CLOSE_WAIT = 8  # tcpi_state once the peer's FIN arrived
HOLD_QUEUE = 1  # too much read ahead
HOLD_BACKEND = 2  # the backend's write buffer is full

Fields = list[tuple[bytes, bytes]]


class HttpSite(Protocol):
    """The listener as an HTTP session sees it (listener.py implements it)."""

    name: str
    config: Listener
    scheme: str
    retired: bool
    # from `config`, kept as plain attributes for the request path
    port: int
    forwarded: bool  # forwarded_headers.enabled
    connect_attempts: int  # limits.connect_retries + 1

    def route(self, host: str, target: str) -> BackendGroup: ...

    has_rules: bool  # without rules, every request takes `default`
    default: BackendGroup

    keeps_heads: bool  # the access log is on: build a record per request
    request_counts: RequestCounts  # what count_request adds to (inlined by _done)

    def count_request(
        self, rule: str, method: bytes, status: int, duration: float, rejection: str
    ) -> None: ...
    def log_request(self, record: RequestRecord) -> None: ...
    def count_backend_error(self, group: str, kind: str) -> None: ...
    def count_backend_failure(self, endpoint: EndpointState) -> None: ...


class Client(Protocol):
    """The client connection (tunnel.ClientSide) as its HTTP session sees it."""

    transport: asyncio.Transport | None
    loop: asyncio.AbstractEventLoop
    group: BackendGroup | None

    @property
    def client_ip(self) -> str: ...
    @property
    def client_port(self) -> int: ...

    def take_upgrade(self, head: bytes, rest: bytes) -> None: ...
    def end_http(self, linger: bool) -> None: ...


def _headers(fields: Fields) -> Headers:
    headers = Headers()
    for name, value in fields:
        headers[name.decode("latin-1")] = value.decode("latin-1")
    return headers


# ---------------------------------------------------------------- one request


class _Exchange:
    """One request and its answer."""

    __slots__ = (
        "attempts_left",
        "backend",
        "body_at",
        "body_in",
        "body_out",
        "body_timer",
        "chunked",
        "client_framing",
        "endpoint",
        "group",
        "head",
        "head_sent",
        "keep_alive",
        "rendered",
        "replay",
        "replay_size",
        "request_done",
        "response_started",
        "resumes",
        "sent",
        "stall_at",
        "stall_mark",
        "started",
        "status",
        "sticky_fresh",
        "sticky_key",
        "tried",
        "waiting",
    )

    def __init__(self, head: RequestHead, group: BackendGroup, started: float) -> None:
        self.head = head
        self.group = group
        self.started = started
        self.rendered = b""
        self.chunked = head.framing == "chunked"
        self.sticky_key: str | None = None
        self.sticky_fresh = False  # the request's cookie has more than half its life left
        self.tried: list[str] = []
        self.attempts_left = 1
        self.endpoint: EndpointState | None = None
        self.backend: BackendConn | None = None
        self.replay: list[bytes] | None = []  # framed body bytes sent so far; None: too many
        self.replay_size = 0
        self.waiting: list[bytes] = []  # framed body bytes waiting for a backend connection
        self.request_done = False  # its EndOfMessage was read (it follows the head at once
        # when there is no body)
        self.sent = False  # some of the request reached a backend connection
        self.response_started = False
        self.head_sent = False
        self.keep_alive = True
        self.client_framing: Framing = "none"
        self.status = 0
        self.body_in = 0
        self.body_out = 0
        # the body timer (HttpSession._body_read): when the client was last read inside the
        # body, and a handle made only for a body that spans several reads
        self.body_at = 0.0
        self.body_timer: asyncio.TimerHandle | None = None
        # a send stall (the backend takes no body): when progress was last seen, and what
        # progress looked like then (HttpSession._send_mark)
        self.resumes = 0  # times the backend's write buffer drained
        self.stall_at = 0.0
        self.stall_mark: tuple[int, int, int, int, bool, bool] = (0, 0, 0, 0, False, False)


class HttpSession:
    """The HTTP side of one client connection (see the module docstring)."""

    # Slots: one session lives per idle keep-alive connection.
    __slots__ = (
        "client",
        "client_write_paused",
        "closing",
        "current",
        "done",
        "draining",
        "due",
        "head_timer",
        "holds",
        "http",
        "on_due",
        "queue",
        "queued",
        "reader",
        "requests",
        "site",
        "timer",
        "timer_at",
    )

    def __init__(self, client: Client, site: HttpSite) -> None:
        self.client = client
        self.site = site
        config = site.config
        self.http = config.http
        self.reader = RequestReader(
            head_limit=config.limits.max_header_bytes, max_body=config.http.max_body_bytes
        )
        # events read ahead, in order (a list: a deque's first block is 600 B per session)
        self.queue: list[RequestEvent | Rejection] = []
        self.queued = 0  # bytes of body events in the queue
        self.current: _Exchange | None = None
        self.requests = 0
        # One timer per session, re-armed lazily: `due` and `on_due` say what is pending;
        # the handle fires at `timer_at` and re-files itself when `due` moved later.
        # Each request moves the deadline without a cancel and a new handle.
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.due = 0.0
        self.on_due: Callable[[], None] | None = None
        self.head_timer = False  # the timer is the request-head one (408), not idle
        self.holds = 0  # why the client is not being read: HOLD_* bits
        self.client_write_paused = False
        self.draining = False
        self.closing = False  # the client connection ends after the current answer
        self.done = False

    # ---------------------------------------------------------------- client side

    def client_data(self, data: bytes) -> None:
        if self.done:
            return
        refused = None
        try:
            events = self.reader.feed(data)
        except Rejection as rejection:
            events = self.reader.salvaged  # the requests before the bad one, answered first
            refused = rejection
        for event in events:
            if type(event) is Body:
                self.queued += len(event.data)
            self.queue.append(event)
        if refused is not None:
            self.queue.append(refused)
        self._pump()
        exchange = self.current
        if exchange is not None and not exchange.request_done and not self.done:
            # Inside a body (after _pump, every queued event of it is handed on). A client
            # told to expect 100 Continue waits for the backend before its first byte.
            if exchange.body_in or not exchange.head.expect_continue:
                self._body_read(exchange)
            return
        idle = exchange is None and not self.done and not self.head_timer
        if idle and self.on_due is not None:  # between requests: bytes of a head arrived
            self._arm(self.http.request_head_timeout_seconds, self._head_timeout)
            self.head_timer = True

    def _pump(self) -> None:
        """Dispatch queued events: the current request's body, then the next request."""
        queue = self.queue
        while queue and not self.done:
            event = queue[0]
            exchange = self.current
            if exchange is None:
                del queue[0]
                if type(event) is RequestHead:
                    self._start(event)
                elif type(event) is Upgrade:
                    self._upgrade(event)
                    return
                elif isinstance(event, Rejection):
                    self._refuse(event)
                    return
                elif type(event) is Body:
                    self.queued -= len(event.data)
                # else the end of a body that was answered early: dropped
                continue
            if exchange.request_done:
                break  # the next request waits for this answer
            del queue[0]
            if type(event) is Body:
                self.queued -= len(event.data)
                self._send_body(exchange, event.data)
            elif type(event) is EndOfMessage:
                exchange.request_done = True
                if exchange.chunked:
                    self._to_backend(exchange, LAST_CHUNK)
                self._arm_response_timer(exchange)
            elif isinstance(event, Rejection):
                # The current request's body went bad (chunk framing, 413): nothing more of
                # it may reach the backend.
                self._abort_exchange(exchange, event)
                return
        if (
            self.queued > QUEUE_LIMIT
            or len(queue) > QUEUE_EVENTS
            or (self.current is not None and sum(map(len, self.current.waiting)) > QUEUE_LIMIT)
        ):
            self._hold(HOLD_QUEUE)
        else:
            self._release(HOLD_QUEUE)

    def _start(self, head: RequestHead) -> None:
        self._cancel_timer()
        self.requests += 1
        site = self.site
        if site.has_rules:
            group = site.route(head.host, head.target.decode("latin-1"))
        else:
            group = site.default  # what route() answers without rules, without the call
        client = self.client
        client.group = group
        exchange = self.current = _Exchange(head, group, client.loop.time())
        redirect = self.http.redirect_to_https
        if redirect.enabled:
            self._answer_self(exchange, redirect_answer(head, redirect.port))
            return
        if group.sticky_enabled:
            exchange.sticky_key, exchange.sticky_fresh = group.sticky.cookie_for_fields(head.fields)
            head.forward_fields = group.sticky.strip_request_fields(head.forward_fields)
        exchange.keep_alive = (
            head.keep_alive
            and self.http.keep_alive_timeout_seconds > 0
            and self.requests < self.http.max_requests_per_connection
            and not self.draining
            and not site.retired
        )
        exchange.rendered = head.render(
            client_ip=client.client_ip,
            scheme=site.scheme,
            port=site.port,
            forwarded=site.forwarded,
        )
        exchange.attempts_left = site.connect_attempts
        self._attempt(exchange)

    def _attempt(self, exchange: _Exchange) -> None:
        """Send the request to the next endpoint, or answer 503/502 when none is left."""
        endpoint = None
        if exchange.attempts_left > 0:
            info = RequestInfo(
                self.client.client_ip,
                exchange.head.target.decode("latin-1"),
                request=_Fields(exchange.head.fields),
            )
            endpoint = exchange.group.choose(info, exchange.tried, exchange.sticky_key)
        if endpoint is None:
            if not exchange.tried:
                rejection = Rejection(
                    503, "No ready backend", [("Retry-After", "5")], label="no_ready_backend"
                )
            else:
                rejection = Rejection(
                    502, "No backend could be reached", label="backend_unavailable"
                )
            self._answer_self(exchange, rejection)
            return
        exchange.attempts_left -= 1
        exchange.tried.append(endpoint.key)
        exchange.endpoint = endpoint
        endpoint.active += 1
        loop = self.client.loop
        conn = cast("BackendConn | None", exchange.group.take_idle(endpoint, loop.time()))
        if conn is not None and not conn.lost:
            conn.idle = False
            conn.session = self
            conn.endpoint = endpoint
            self._send_request(exchange, conn)
            return
        conn = BackendConn(self, endpoint, exchange.group)
        exchange.backend = conn
        self._arm(self.site.config.limits.connect_timeout_seconds, self._connect_timeout)
        task = asyncio.ensure_future(
            loop.create_connection(conn.itself, endpoint.address, endpoint.port)
        )
        conn.task = task
        task.add_done_callback(conn.connected)

    def _send_request(self, exchange: _Exchange, conn: BackendConn) -> None:
        """The connection is ready: head, the body so far, and the response deadline."""
        exchange.backend = conn
        spare = conn.spare
        conn.spare = None
        if spare is not None and spare.restart(exchange.head.method):
            conn.reader = spare  # the reader of its last answer, parser and all
        else:
            conn.reader = ResponseReader(exchange.head.method)
        transport = conn.transport
        assert transport is not None
        parts = [exchange.rendered]
        if exchange.replay:
            parts.extend(exchange.replay)
        if exchange.waiting:
            parts.extend(exchange.waiting)
            self._keep_for_replay(exchange, exchange.waiting)
            exchange.waiting = []
        self._cancel_timer()  # the connect timer; before the write, which may arm the stall's
        transport.write(b"".join(parts))
        exchange.sent = True
        if exchange.head.expect_continue and not exchange.request_done and not exchange.body_at:
            self._await_continue(exchange)
        if self.client_write_paused:
            transport.pause_reading()
        self._pump()
        self._arm_response_timer(exchange)

    def _arm_response_timer(self, exchange: _Exchange) -> None:
        """The backend's answer is due once the whole request reached it (a slow upload
        is not the backend's delay)."""
        conn = exchange.backend
        if (
            self.current is exchange
            and exchange.request_done
            and not exchange.response_started
            and conn is not None
            and conn.reader is not None
        ):
            self._arm(self.http.response_head_timeout_seconds, self._response_timeout)

    def _send_body(self, exchange: _Exchange, data: bytes) -> None:
        exchange.body_in += len(data)
        self._to_backend(exchange, frame_chunk(data) if exchange.chunked else data)

    def _to_backend(self, exchange: _Exchange, data: bytes) -> None:
        conn = exchange.backend
        if conn is None or conn.transport is None or conn.reader is None:
            exchange.waiting.append(data)
            return
        if exchange.response_started and conn.reader.done:
            return  # answered already: the rest of the body is read and dropped
        conn.transport.write(data)
        self._keep_for_replay(exchange, [data])

    def _keep_for_replay(self, exchange: _Exchange, parts: list[bytes]) -> None:
        if exchange.replay is None:
            return
        size = sum(map(len, parts))
        exchange.replay_size += size
        if exchange.replay_size > REPLAY_LIMIT or exchange.response_started:
            exchange.replay = None
        else:
            exchange.replay.extend(parts)

    # ---------------------------------------------------------------- backend side

    def backend_connected(self, conn: BackendConn, exc: BaseException | None) -> None:
        exchange = self.current
        if exchange is None or exchange.backend is not conn:
            conn.abandon()
            return
        if exc is not None:
            self._backend_failed(exchange, "connect", repr(exc))
            return
        self._cancel_timer()
        self._send_request(exchange, conn)

    def _stall_probe(self) -> float:
        return min(STALL_PROBE, self.http.response_head_timeout_seconds)

    def _send_mark(self, exchange: _Exchange) -> tuple[int, int, int, int, bool, bool]:
        """What progress looks like: a change in any of these. The bytes the backend
        acknowledged count too: a slow reader frees the kernel's send buffer first, and
        the write buffer may not move for many seconds while it does."""
        conn = exchange.backend
        transport = conn.transport if conn is not None else None
        size = acked = 0
        if transport is not None:
            size = transport.get_write_buffer_size()
            info = tcp_info(transport)
            if len(info) >= ACKED_AT + 8:
                acked = int.from_bytes(info[ACKED_AT : ACKED_AT + 8], sys.byteorder)
        return (
            exchange.resumes,
            size,
            acked,
            exchange.body_out,
            exchange.response_started,
            exchange.head_sent,
        )

    def _send_check(self) -> None:
        """The send stall's timer: 504 (or a cut answer) once the backend has taken no
        body byte and sent nothing for `responseHeadTimeoutSeconds`."""
        exchange = self.current
        if exchange is None or exchange.backend is None or not self.holds & HOLD_BACKEND:
            return  # the backend took the body again, or the exchange ended
        client = self.client.transport
        if client is not None and not client.is_closing() and self._client_left(exchange, client):
            client.abort()  # connection_lost follows: client_lost drops the backend
            return
        now = self.client.loop.time()
        mark = self._send_mark(exchange)
        if mark != exchange.stall_mark or self.client_write_paused:
            # progress, or the client is the one not reading the answer
            exchange.stall_mark = mark
            exchange.stall_at = now
        left = exchange.stall_at + self.http.response_head_timeout_seconds - now
        if left > 0:
            self._arm(min(self._stall_probe(), left), self._send_check)
            return
        self.site.count_backend_error(exchange.group.name, "timeout")
        self._answer_self(
            exchange, Rejection(504, "Backend did not take the request", label="backend_timeout")
        )

    def _client_left(self, exchange: _Exchange, transport: asyncio.Transport) -> bool:
        length = exchange.head.content_length
        if exchange.head.framing != "length" or length is None:
            return client_left(transport, None)
        return client_left(transport, length - exchange.body_in - self.queued)

    def _connect_timeout(self) -> None:
        exchange = self.current
        if exchange is not None and exchange.backend is not None:
            self._backend_failed(exchange, "connect", "connect timed out")

    def _response_timeout(self) -> None:
        exchange = self.current
        if exchange is None or exchange.head_sent:
            return
        self.site.count_backend_error(exchange.group.name, "timeout")
        self._drop_backend(exchange)
        self._answer_self(
            exchange, Rejection(504, "Backend did not answer in time", label="backend_timeout")
        )

    def backend_data(self, conn: BackendConn, data: bytes) -> None:
        exchange = self.current
        reader = conn.reader
        if exchange is None or exchange.backend is not conn or reader is None:
            conn.abandon()
            return
        exchange.response_started = True
        exchange.replay = None
        try:
            events = reader.feed(data)
        except Rejection as rejection:
            self.site.count_backend_error(exchange.group.name, "invalid")
            self._drop_backend(exchange)
            self._answer_self(exchange, rejection)
            return
        self._relay_all(exchange, conn, events)

    def _relay_all(
        self, exchange: _Exchange, conn: BackendConn, events: list[ResponseEvent]
    ) -> None:
        """Relay the events of one read in one write (a syscall per read, not per event),
        then finish the exchange if its answer ended."""
        out: list[bytes] = []
        ended = False
        for event in events:
            if self._relay(exchange, event, out):
                ended = True
                break
        transport = self.client.transport
        if out and transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))
        if ended:
            self._finish(exchange, conn)

    def backend_lost(self, conn: BackendConn) -> None:
        exchange = self.current
        reader = conn.reader
        if exchange is None or exchange.backend is not conn:
            return
        if not exchange.response_started or reader is None:
            self._backend_failed(exchange, "reset", "closed before answering")
            return
        try:
            events = reader.feed_eof()
        except Rejection as rejection:
            self.site.count_backend_error(exchange.group.name, "reset")
            self._drop_backend(exchange)
            self._answer_self(exchange, rejection)
            return
        self._relay_all(exchange, conn, events)

    def _backend_failed(self, exchange: _Exchange, kind: str, why: str) -> None:
        """Nothing of the answer came: retry when that is safe, else 502."""
        endpoint = exchange.endpoint
        self._cancel_timer()
        self._drop_backend(exchange)
        self.site.count_backend_error(exchange.group.name, kind)
        if endpoint is not None:
            self.site.count_backend_failure(endpoint)
            log.debug("backend %s failed: %s", endpoint.key, why)
        replayable = exchange.replay is not None and not exchange.response_started
        safe = not exchange.sent or exchange.head.method in IDEMPOTENT
        if replayable and safe:
            self._attempt(exchange)
            return
        self._answer_self(exchange, Rejection(502, "Backend failed", label="backend_failed"))

    def _drop_backend(self, exchange: _Exchange) -> None:
        """Close this exchange's backend connection (never pooled) and release its slot."""
        conn = exchange.backend
        exchange.backend = None
        if conn is not None:
            conn.session = None
            transport = conn.transport
            if transport is not None and transport.get_write_buffer_size():
                transport.abort()  # the rest of a request nobody will answer: not flushed
            else:
                conn.abandon()
        if exchange.endpoint is not None:
            exchange.endpoint.active -= 1
            exchange.endpoint = None

    def _relay(self, exchange: _Exchange, event: object, out: list[bytes]) -> bool:
        """Add what `event` sends to the client to `out`; True at the answer's end."""
        kind = type(event)
        if kind is Body:
            data = cast(Body, event).data
            exchange.body_out += len(data)
            out.append(frame_chunk(data) if exchange.client_framing == "chunked" else data)
        elif kind is ResponseHead:
            self._cancel_timer()
            head = cast(ResponseHead, event)
            exchange.status = head.status
            group = exchange.group
            endpoint = exchange.endpoint
            if group.sticky_rewrites_response and endpoint is not None:
                head.fields = group.sticky.response_fields(
                    endpoint.key,
                    head.fields,
                    exchange.sticky_key == endpoint.key and exchange.sticky_fresh,
                )
            if self.draining or self.site.retired:
                exchange.keep_alive = False
            exchange.client_framing = head.client_framing(exchange.head.version)
            out.append(
                head.render(client_version=exchange.head.version, keep_alive=exchange.keep_alive)
            )
            exchange.head_sent = True
        elif kind is EndOfMessage:
            if exchange.client_framing == "chunked":
                out.append(LAST_CHUNK)
            return True
        elif kind is Informational and exchange.head.version == b"1.1":
            out.append(cast(Informational, event).render())
            if not exchange.request_done and not exchange.body_in:
                self._body_read(exchange)  # 100 Continue: the body is the client's to send
        return False

    def _finish(self, exchange: _Exchange, conn: BackendConn | None) -> None:
        """The answer is complete: pool or close the backend, then the next request."""
        endpoint = exchange.endpoint
        reader = conn.reader if conn is not None else None
        if conn is not None and endpoint is not None and reader is not None:
            exchange.backend = None
            conn.session = None
            conn.reader = None
            if reader.reusable and exchange.request_done and not conn.lost:
                ttl = reader.head.keep_alive_timeout() if reader.head is not None else None
                if self.client_write_paused and conn.transport is not None:
                    conn.transport.resume_reading()
                conn.idle = True
                conn.spare = reader
                exchange.group.put_idle(endpoint, conn, ttl, self.client.loop)
            else:
                conn.abandon()
        if endpoint is not None:
            endpoint.active -= 1
            exchange.endpoint = None
        self._done(exchange)
        if (
            not exchange.keep_alive
            or exchange.client_framing == "close"
            or not exchange.request_done
            or (self.closing and not self.queue)
        ):
            self._close()
            return
        self._idle()
        self._pump()
        if self.closing and self.current is None and not self.queue and not self.done:
            self._close()  # the client half-closed and everything it asked is answered

    def _done(self, exchange: _Exchange, rejection: str = "") -> None:
        """Count and log the request, once."""
        if self.current is exchange:
            self.current = None
            self._release(HOLD_BACKEND)  # a backend's full buffer no longer holds the client
        if exchange.body_timer is not None:
            exchange.body_timer.cancel()
            exchange.body_timer = None
        client = self.client
        now = client.loop.time()
        head = exchange.head
        duration = now - exchange.started
        site = self.site
        status = exchange.status
        if rejection or not status:
            site.count_request(exchange.group.name, head.method, status, duration, rejection)
        else:  # RequestCounts.add, inlined: no Python call per request
            counts = site.request_counts
            rule = exchange.group.name
            buckets = counts.buckets.get(rule)
            if buckets is None:  # the rule's first request: add() makes its slots
                counts.add(rule, head.method, status, duration)
            else:
                key = (rule, head.method, status // 100)
                requests = counts.requests
                requests[key] = requests.get(key, 0) + 1
                buckets[bucket(REQUEST_BUCKETS, duration)] += 1
                counts.sums[rule] += duration
        if not site.keeps_heads:
            return  # no access log: no record built
        site.log_request(
            RequestRecord(
                client=client.client_ip,
                client_port=client.client_port,
                listener=self.site.name,
                rule=exchange.group.name,
                backend=exchange.tried[-1] if exchange.tried else "",
                status=exchange.status,
                rejection=rejection,
                started=time.time() - (now - exchange.started),
                duration=duration,
                bytes_c2b=exchange.body_in,
                bytes_b2c=exchange.body_out,
                method=head.method.decode("latin-1"),
                host=head.host,
                target=head.target.decode("latin-1"),
                forwarded_for=_chain_sent(site, head, client.client_ip),
            )
        )

    # ---------------------------------------------------------------- answers of our own

    def _answer_self(self, exchange: _Exchange, rejection: Rejection) -> None:
        """Answer the current request ourselves and close (the rest of its body is not
        read); an answer already under way is cut instead."""
        self._drop_backend(exchange)
        exchange.status = rejection.status
        transport = self.client.transport
        if not exchange.head_sent and transport is not None and not transport.is_closing():
            transport.write(rejection.render())
        self._done(exchange, rejection.label)
        self._close(linger=not exchange.request_done)

    def _abort_exchange(self, exchange: _Exchange, rejection: Rejection) -> None:
        self._answer_self(exchange, rejection)

    def _refuse(self, rejection: Rejection, head: RequestHead | None = None) -> None:
        """A request refused before any backend saw it (400, 413, 431, 505, a redirect)."""
        transport = self.client.transport
        if transport is not None and not transport.is_closing():
            transport.write(rejection.render())
        method = head.method if head is not None else b""
        self.site.count_request("", method, rejection.status, 0.0, rejection.label)
        if not self.site.keeps_heads:
            self._close(linger=True)
            return
        self.site.log_request(
            RequestRecord(
                client=self.client.client_ip,
                client_port=self.client.client_port,
                listener=self.site.name,
                rule="",
                backend="",
                status=rejection.status,
                rejection=rejection.label,
                started=time.time(),
                duration=0.0,
                bytes_c2b=0,
                bytes_b2c=0,
                method=head.method.decode("latin-1") if head is not None else "",
                host=head.host if head is not None else "",
                target=head.target.decode("latin-1") if head is not None else "",
                forwarded_for=(
                    _chain_sent(self.site, head, self.client.client_ip) if head is not None else ""
                ),
            )
        )
        self._close(linger=True)

    def _upgrade(self, upgrade: Upgrade) -> None:
        """A WebSocket upgrade after plain requests: the WebSocket path takes over."""
        redirect = self.http.redirect_to_https
        if redirect.enabled and upgrade.request is not None:
            self._refuse(redirect_answer(upgrade.request, redirect.port), upgrade.request)
            return
        self._stop_timer()
        self.done = True
        self.holds = 0
        transport = self.client.transport
        if transport is not None:
            transport.resume_reading()
        self.client.take_upgrade(upgrade.head, upgrade.rest)

    # ---------------------------------------------------------------- timers

    def _idle(self) -> None:
        """Between requests: the keep-alive idle timer runs until bytes come."""
        self.head_timer = False
        self._arm(self.http.keep_alive_timeout_seconds, self._idle_timeout)

    def _idle_timeout(self) -> None:
        if self.current is None:
            self._close()

    def _head_timeout(self) -> None:
        if self.current is None and not self.done:
            self._refuse(Rejection(408, "Timed out reading the request", label="head_timeout"))

    def _body_read(self, exchange: _Exchange) -> None:
        """The client was read inside `exchange`'s body (or may send it now): its gap
        starts again. A handle of its own, beside the session's timer (the connect or the
        stall timer may run meanwhile), moved lazily like that one."""
        loop = self.client.loop
        first = not exchange.body_at
        now = exchange.body_at = loop.time()
        timer = exchange.body_timer
        if timer is not None and first:  # _await_continue's: the client's bound from now on
            timer.cancel()
            timer = None
        if timer is None:
            seconds = self.http.request_body_timeout_seconds
            exchange.body_timer = loop.call_at(now + seconds, self._body_check, exchange)

    def _body_check(self, exchange: _Exchange) -> None:
        exchange.body_timer = None
        if self.current is not exchange or exchange.request_done or self.done:
            return
        if self.holds:
            return  # not being read: the gap does not count (_release starts it again)
        loop = self.client.loop
        due = exchange.body_at + self.http.request_body_timeout_seconds
        if loop.time() < due:
            exchange.body_timer = loop.call_at(due, self._body_check, exchange)
            return
        # The request can never complete: its backend is dropped, never pooled.
        self._answer_self(
            exchange, Rejection(408, "Timed out reading the request body", label="body_timeout")
        )

    def _await_continue(self, exchange: _Exchange) -> None:
        """The head with Expect: 100-continue reached a backend, which owes an immediate
        100 or final answer (RFC 9110 §10.1.1) while the client may wait for it: bound
        that wait as a response head's. Else a client silent after such a head, to a
        backend that waits for the body, would slip past the body timer."""
        if exchange.body_timer is not None:
            exchange.body_timer.cancel()  # an earlier attempt's
        loop = self.client.loop
        due = loop.time() + self.http.response_head_timeout_seconds
        exchange.body_timer = loop.call_at(due, self._continue_check, exchange)

    def _continue_check(self, exchange: _Exchange) -> None:
        exchange.body_timer = None
        if self.current is not exchange or exchange.request_done or self.done:
            return
        if exchange.body_at:
            self._body_check(exchange)  # the body began: the client's gap is bounded now
            return
        if exchange.response_started:
            return  # a final answer instead of 100: the body is not coming, nor due
        self.site.count_backend_error(exchange.group.name, "timeout")
        self._answer_self(
            exchange, Rejection(504, "Backend did not answer in time", label="backend_timeout")
        )

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        loop = self.client.loop
        due = self.due = loop.time() + seconds
        self.on_due = callback
        if self.timer is not None:
            if self.timer_at <= due:
                return  # it fires first and files itself again for `due`
            self.timer.cancel()
        self.timer_at = due
        self.timer = loop.call_at(due, self._tick)

    def _tick(self) -> None:
        self.timer = None
        callback = self.on_due
        if callback is None:
            return
        loop = self.client.loop
        if loop.time() < self.due:
            self.timer_at = self.due
            self.timer = loop.call_at(self.due, self._tick)
            return
        self.on_due = None
        callback()

    def _cancel_timer(self) -> None:
        """Nothing is due (the handle, if any, fires for nothing or is reused)."""
        self.on_due = None

    def _stop_timer(self) -> None:
        """The session ends: drop the handle too, so the loop holds no reference to it."""
        self.on_due = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # ---------------------------------------------------------------- flow control

    def _hold(self, reason: int) -> None:
        held = self.holds
        self.holds = held | reason
        transport = self.client.transport
        if not held and transport is not None and not transport.is_closing():
            transport.pause_reading()

    def _release(self, reason: int) -> None:
        held = self.holds
        if not held & reason:
            return
        self.holds = held & ~reason
        transport = self.client.transport
        if not self.holds and transport is not None and not transport.is_closing():
            transport.resume_reading()
            exchange = self.current
            if exchange is not None and not exchange.request_done and exchange.body_at:
                self._body_read(exchange)  # the pause was not the client's gap

    def backend_paused(self) -> None:
        self._hold(HOLD_BACKEND)
        exchange = self.current
        if exchange is not None and not exchange.request_done and self.on_due is None:
            # The request body is being sent and the backend's buffers are full: bound the
            # stall (once the whole request is out, the response timer bounds the wait).
            # While a body is sent no other timer runs, so a pending one is the look
            # armed at an earlier pause: it covers this one (a fast upload pauses and
            # resumes many times a second; the resumes count as progress).
            exchange.stall_at = self.client.loop.time()
            exchange.stall_mark = self._send_mark(exchange)
            self._arm(self._stall_probe(), self._send_check)

    def backend_resumed(self) -> None:
        exchange = self.current
        if exchange is not None:
            exchange.resumes += 1
        self._release(HOLD_BACKEND)

    def client_paused(self) -> None:
        self.client_write_paused = True
        exchange = self.current
        if exchange is not None and exchange.backend is not None:
            transport = exchange.backend.transport
            if transport is not None:
                transport.pause_reading()

    def client_resumed(self) -> None:
        self.client_write_paused = False
        exchange = self.current
        if exchange is not None and exchange.backend is not None:
            transport = exchange.backend.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    # ---------------------------------------------------------------- ending

    def drain(self) -> None:
        """Finish the answer under way with Connection: close, then close."""
        self.draining = True
        if self.current is None:
            self._close()
        else:
            self.current.keep_alive = False

    def client_eof(self) -> bool:
        """The client half-closed: answer what is under way, then close. A FIN in the
        middle of a request body, before any answer, cuts the request short for good (no
        more bytes can come, and the backend would wait for them): False, so the
        connection closes and client_lost counts the request as client_gone. An answer
        already under way (a backend that answered early) is still relayed."""
        self.closing = True
        exchange = self.current
        if exchange is not None and not exchange.request_done and not exchange.response_started:
            return False  # _pump hands on every queued event up to the body's end
        return exchange is not None or bool(self.queue)

    def _close(self, linger: bool = False) -> None:
        """End the client connection; `linger` after an answer that left request bytes
        unread, so closing does not reset the connection before the client reads it."""
        self.done = True
        self._stop_timer()
        self.client.end_http(linger)

    def client_lost(self) -> None:
        """The client connection is gone: drop the backend of an unfinished answer."""
        self.done = True
        self._stop_timer()
        exchange = self.current
        if exchange is not None:
            task = exchange.backend.task if exchange.backend is not None else None
            if task is not None and not task.done():
                task.cancel()
            self._drop_backend(exchange)
            self._done(exchange, "client_gone")


def tcp_info(transport: asyncio.BaseTransport) -> bytes:
    """The kernel's `struct tcp_info` for a transport's socket; empty where there is none."""
    sock = transport.get_extra_info("socket")
    if TCP_INFO is None or sock is None:
        return b""
    try:
        info: bytes = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, 256)
    except OSError:
        return b""
    return info


def client_left(transport: asyncio.BaseTransport, missing: int | None) -> bool:
    """Whether a client that is not being read has left. Paused, its reset or FIN reaches
    no protocol callback (uvloop and asyncio alike), so this asks the kernel. Left: a
    reset, or a FIN before the `missing` body bytes that would complete the request (it
    can never end). A FIN after a complete body (or one of unknown length) is a
    half-close: the answer is still due."""
    info = tcp_info(transport)
    if not info:
        return False
    state = info[0]
    if state == TCP_CLOSE:
        return True
    if state != TCP_CLOSE_WAIT or missing is None:
        return False
    return unread(transport) < missing


def unread(transport: asyncio.BaseTransport) -> int:
    """Bytes received on a transport's socket and not read yet (FIONREAD)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        count = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(count, sys.byteorder)


def _chain_sent(site: HttpSite, head: RequestHead, client_ip: str) -> str:
    """The X-Forwarded-For chain the backend gets (or would get), as the WebSocket line
    logs it: the client's own chain, the client address appended when forwarding is on."""
    if not site.forwarded:
        return head.prior_xff
    return f"{head.prior_xff}, {client_ip}" if head.prior_xff else client_ip


def redirect_answer(head: RequestHead, port: int) -> Rejection:
    """308 to the same host and target over https (the port named unless 443)."""
    host = head.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    authority = host if port == 443 else f"{host}:{port}"
    location = f"https://{authority}{head.target.decode('latin-1')}"
    return Rejection(308, "Use HTTPS", [("Location", location)], label="redirect_to_https")


class _Fields:
    """Request fields seen as `Headers`, built only when a hash policy reads one."""

    __slots__ = ("fields",)

    def __init__(self, fields: Fields) -> None:
        self.fields = fields

    @property
    def headers(self) -> Headers:
        return _headers(self.fields)


class BackendConn(asyncio.Protocol):
    """One HTTP/1.1 connection to a backend: serves one exchange at a time, and idles in
    its group's pool between them (bytes or a close while idle end it)."""

    __slots__ = (
        "endpoint",
        "group",
        "idle",
        "lost",
        "reader",
        "session",
        "spare",
        "task",
        "transport",
    )

    def __init__(
        self, session: HttpSession | None, endpoint: EndpointState, group: BackendGroup
    ) -> None:
        self.session: HttpSession | None = session
        self.endpoint = endpoint
        self.group = group
        self.transport: asyncio.Transport | None = None
        self.reader: ResponseReader | None = None
        self.spare: ResponseReader | None = None  # the last answer's reader, while pooled
        self.task: asyncio.Future[tuple[asyncio.Transport, BackendConn]] | None = None
        self.idle = False
        self.lost = False

    def itself(self) -> BackendConn:
        return self

    def connected(self, task: asyncio.Future[tuple[asyncio.Transport, BackendConn]]) -> None:
        self.task = None
        if task.cancelled():
            return
        exc = task.exception()
        session = self.session
        if session is None:
            if exc is None:
                self.abandon()
            return
        session.backend_connected(self, exc)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        session = self.session
        if session is None:
            # idle in the pool: a backend must not talk unasked; never reuse it
            self.group.forget_idle(self.endpoint, self)
            self.abandon()
            return
        session.backend_data(self, data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        session = self.session
        if session is not None:
            self.session = None
            session.backend_lost(self)
        elif self.idle:
            self.group.forget_idle(self.endpoint, self)

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.backend_paused()

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.backend_resumed()

    def abandon(self) -> None:
        """Close (buffered writes flushed first, with a bound)."""
        self.session = None
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if transport.get_write_buffer_size():
                asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self._abort_if_stuck)
            transport.close()

    def _abort_if_stuck(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()
