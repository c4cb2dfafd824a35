"""One client connection: handshake, backend selection, then a frame-aware byte tunnel.

`ClientSide` is the asyncio Protocol of the accepted socket and owns the connection's
whole life; `BackendSide` is the thin Protocol of the backend socket. After the 101 the
bytes flow through two `FrameTracker`s with flow control (each side pauses the other's
reading when its write buffer fills). No task runs per message: the idle timeout is
one movable deadline, keepalive is two timer handles. A task exists only while the
backend connection is being opened.

Closes are always WebSocket Close frames at frame boundaries, never a bare reset:
1001 idle timeout / drain / shutdown, 1009 message too big, 1011 keepalive timeout,
1014 backend failure; a peer's own Close is relayed unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import os
from enum import Enum
from typing import TYPE_CHECKING, cast

from websockets.http11 import Request

from dataplane.balancer import EndpointState, RequestInfo
from dataplane.frames import (
    CLOSE_BAD_GATEWAY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NO_STATUS,
    OP_CLOSE,
    OP_PONG,
    ControlFrame,
    FrameError,
    FrameTracker,
    close_frame,
    ping_frame,
)
from dataplane.handshake import (
    HEAD_END,
    Rejection,
    parse_backend_head,
    parse_request,
    parse_status_line,
    render_backend_head,
    render_request,
    validate_upgrade,
)

if TYPE_CHECKING:
    from dataplane.listener import ListenerRuntime

log = logging.getLogger("wslb.tunnel")

CLOSE_TIMEOUT = 3.0  # how long to wait for the peers' Close replies before closing TCP
MAX_BACKEND_HEAD = 16 * 1024
REFUSED_HEAD_WAIT = 1.0  # how long a refused client may take to send its head
KEEPALIVE_PREFIX = b"wslb-ka-"


class State(Enum):
    HEAD = 1  # reading the client's request head
    CONNECTING = 2  # choosing and dialling a backend
    TUNNEL = 3  # relaying frames
    RELAY = 4  # relaying a backend's non-101 answer, then closing
    CLOSED = 5


class ClientSide(asyncio.Protocol):
    """The accepted client connection and everything that happens to it."""

    # Slots: one of these lives per open connection; a dict per instance costs ~1 KiB.
    __slots__ = (
        "accepted_at",
        "admission",
        "b2c",
        "backend",
        "backend_sent_close",
        "buffer",
        "bytes_b2c",
        "bytes_c2b",
        "c2b",
        "client_ip",
        "client_sent_close",
        "close_code",
        "close_initiator",
        "close_timer",
        "closing",
        "dialing",
        "drain_timer",
        "draining",
        "endpoint",
        "idle_timeout",
        "ka_backend_pending",
        "ka_check",
        "ka_client_pending",
        "ka_prefix",
        "ka_seq",
        "ka_timer",
        "last_activity",
        "listener",
        "loop",
        "lost",
        "pending",
        "relay_remaining",
        "state",
        "task",
        "timer",
        "transport",
        "tunnel_at",
        "wheel_slot",
    )

    def __init__(self, listener: ListenerRuntime) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.state = State.HEAD
        self.transport: asyncio.Transport | None = None
        self.backend: BackendSide | None = None
        self.endpoint: EndpointState | None = None
        self.client_ip = ""
        self.accepted_at = 0.0
        self.tunnel_at = 0.0
        self.buffer = bytearray()
        self.pending = bytearray()  # client bytes that arrived before the 101
        self.admission: tuple[Rejection, str] | None = None
        self.task: asyncio.Task[None] | None = None
        self.dialing: tuple[EndpointState, BackendSide] | None = None
        self.timer: asyncio.TimerHandle | None = None  # handshake, then idle deadline
        self.last_activity = 0.0
        self.idle_timeout = 0.0
        self.c2b: FrameTracker | None = None
        self.b2c: FrameTracker | None = None
        self.bytes_c2b = 0
        self.bytes_b2c = 0
        # closing
        self.closing = False
        self.client_sent_close = False
        self.backend_sent_close = False
        self.close_code = CLOSE_NO_STATUS
        self.close_initiator = ""
        self.close_timer: asyncio.TimerHandle | None = None
        self.drain_timer: asyncio.TimerHandle | None = None
        self.draining = False
        # keepalive
        self.ka_timer: asyncio.TimerHandle | None = None
        self.ka_check: asyncio.TimerHandle | None = None
        self.ka_seq = 0
        self.ka_prefix = b""
        self.ka_client_pending = False
        self.ka_backend_pending = False
        self.relay_remaining: int | None = None
        self.wheel_slot: int | None = None  # the idle deadline's slot in listener.wheel
        self.lost = False  # connection_lost ran

    # ---------------------------------------------------------------- accept, head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.accepted_at = self.loop.time()
        peer = transport.get_extra_info("peername")
        ip = str(peer[0]) if peer else ""
        self.client_ip = ip[7:] if ip.startswith("::ffff:") else ip
        self.admission = self.listener.admit(self)
        wait = self.listener.config.limits.handshake_timeout_seconds
        if self.admission is not None:
            # Refused anyway: do not hold a slot for the whole handshake timeout.
            wait = min(wait, REFUSED_HEAD_WAIT)
        self.timer = self.loop.call_later(wait, self._head_timeout)

    def data_received(self, data: bytes) -> None:
        if self.state is State.TUNNEL:
            # Hot path: one tracker feed and one write per chunk.
            self.last_activity = self.loop.time()
            self.bytes_c2b += len(data)
            c2b = self.c2b
            assert c2b is not None and self.backend is not None
            out = c2b.feed(data)
            if out:
                self.backend.transport.write(out)  # type: ignore[union-attr]
            if c2b.error is not None and not self.closing:
                self._frame_error(c2b.error)
            return
        if self.state is State.HEAD:
            self._head_data(data)
        elif self.state is State.CONNECTING:
            self.pending += data
            if len(self.pending) > self.listener.config.limits.max_header_bytes:
                # A client must wait for the 101 before sending frames (RFC 6455 §4.1).
                early = Rejection(400, "Data sent before the handshake completed")
                self._reject(early, "early_data")

    def _head_data(self, data: bytes) -> None:
        searched = max(0, len(self.buffer) - 3)
        self.buffer += data
        end = self.buffer.find(HEAD_END, searched)
        limit = self.listener.config.limits.max_header_bytes
        if end < 0:
            if len(self.buffer) > limit:
                self._reject(Rejection(431, "Request header fields too large"), "header_too_large")
            return
        if end + 4 > limit:
            self._reject(Rejection(431, "Request header fields too large"), "header_too_large")
            return
        head = bytes(self.buffer[: end + 4])
        self.pending = self.buffer[end + 4 :]
        self.buffer = bytearray()
        self._cancel_timer()
        self.state = State.CONNECTING
        limits = self.listener.config.limits
        budget = limits.connect_timeout_seconds * (limits.connect_retries + 1) + 1
        self.timer = self.loop.call_later(budget, self._connect_deadline)
        try:
            self._handle_request(head)
        except _Labelled as labelled:
            self._reject(labelled.inner, labelled.label_text)
        except Rejection as rejection:
            reason = "header_too_large" if rejection.status == 431 else "bad_request"
            self._reject(rejection, reason)

    def _head_timeout(self) -> None:
        self.timer = None
        if self.state is State.HEAD:
            if self.admission is not None:
                self._reject(*self.admission)
            else:
                self._reject(Rejection(408, "Timed out reading the request"), "handshake_timeout")

    def _handle_request(self, head: bytes) -> None:
        if self.admission is not None:
            raise _Labelled(*self.admission)
        request = parse_request(head)
        validate_upgrade(request)
        origin_values = request.headers.get_all("Origin")
        origin = origin_values[0] if len(origin_values) == 1 else None
        if len(origin_values) > 1 or not self.listener.origins.allows(origin):
            raise _Labelled(Rejection(403, "Origin not allowed"), "origin")
        self.task = self.loop.create_task(self._open_backend(request))

    def _reject(self, rejection: Rejection, reason: str) -> None:
        self.listener.count_rejection(rejection.status, reason)
        self.state = State.CLOSED
        self._cancel_timer()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(rejection.render())
            # Half-close: the client reads the answer, then the socket closes cleanly.
            if transport.can_write_eof():
                transport.write_eof()
            self.loop.call_later(1.0, transport.close)
            self.loop.call_later(1.0 + CLOSE_TIMEOUT, self._abort_if_stuck)

    # ---------------------------------------------------------------- backend

    async def _open_backend(self, request: Request) -> None:
        """Dial backends until one answers; any unexpected error becomes a 502, never a
        hung client or a leaked backend socket."""
        try:
            await self._dial(request)
        except asyncio.CancelledError:
            self.task = None
            raise
        except Exception as exc:
            log.warning("backend handshake failed on listener %s: %r", self.listener.name, exc)
            log.debug("backend handshake failure", exc_info=True)
            if self.dialing is not None:
                endpoint, backend = self.dialing
                endpoint.active -= 1
                backend.abandon()
            self.dialing = None
            if self.state is State.CONNECTING:
                self._reject(Rejection(502, "Backend handshake failed"), "backend_invalid")
        self.task = None  # a finished task would stay referenced for the whole connection

    def _connect_deadline(self) -> None:
        self.timer = None
        if self.state is State.CONNECTING:
            if self.task is not None:
                self.task.cancel()
            self._reject(Rejection(502, "No backend answered in time"), "backend_unavailable")

    async def _dial(self, request: Request) -> None:
        listener = self.listener
        limits = listener.config.limits
        info = RequestInfo(self.client_ip, request.path, request.headers)
        tried: list[str] = []
        sticky_key = listener.sticky_endpoint(request.headers)
        listener.rewrite_request(request.headers)
        head = render_request(
            request,
            client_ip=self.client_ip,
            scheme=listener.scheme,
            port=listener.config.port,
            forwarded=listener.config.forwarded_headers.enabled,
        )
        for _ in range(limits.connect_retries + 1):
            endpoint = listener.choose(info, tried, sticky_key)
            if endpoint is None:
                break
            tried.append(endpoint.key)
            endpoint.active += 1
            backend = BackendSide(self)
            self.dialing = (endpoint, backend)
            try:
                async with asyncio.timeout(limits.connect_timeout_seconds):
                    await self.loop.create_connection(
                        backend.itself, endpoint.address, endpoint.port
                    )
                    assert backend.transport is not None and backend.head is not None
                    backend.transport.write(head)
                    answer_head = await backend.head
            except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
                self.dialing = None
                endpoint.active -= 1
                backend.abandon()
                listener.count_backend_failure(endpoint)
                log.debug("backend %s failed: %r", endpoint.key, exc)
                continue
            except BaseException:  # cancelled: the client went away or the deadline passed
                self.dialing = None
                endpoint.active -= 1
                backend.abandon()
                raise
            self.dialing = None
            if self.state is State.CLOSED:  # the client left meanwhile
                endpoint.active -= 1
                backend.abandon()
                return
            self._backend_answered(backend, endpoint, answer_head)
            return
        if self.state is State.CLOSED:
            return
        if not tried:
            self._reject(
                Rejection(503, "No ready backend", [("Retry-After", "5")]), "no_ready_backend"
            )
        else:
            self._reject(Rejection(502, "No backend could be reached"), "backend_unavailable")

    def _backend_answered(self, backend: BackendSide, endpoint: EndpointState, head: bytes) -> None:
        listener = self.listener
        self._cancel_timer()  # the connect deadline
        try:
            # A 101 is relayed unchanged: its headers are parsed only when sticky
            # sessions must rewrite them (a measurable share of each handshake).
            status = parse_status_line(head)
            answer = None
            if status != 101 or listener.sticky_rewrites_response:
                answer = parse_backend_head(head)
        except ValueError:
            endpoint.active -= 1
            backend.abandon()
            listener.count_backend_failure(endpoint)
            self._reject(Rejection(502, "Backend sent an invalid response"), "backend_invalid")
            return
        assert self.transport is not None
        self.backend = backend
        self.endpoint = endpoint
        if answer is not None and status != 101:
            # Relay the backend's own answer as is, then close.
            endpoint.active -= 1
            self.endpoint = None
            listener.count_upgrade(answer.status)
            self.state = State.RELAY
            rest = backend.attach()
            self.transport.write(head + rest)
            self.relay_remaining = (
                None if answer.content_length is None else answer.content_length - len(rest)
            )
            if self.relay_remaining is not None and self.relay_remaining <= 0:
                self._finish()
            else:
                self.timer = self.loop.call_later(
                    listener.config.limits.handshake_timeout_seconds, self._finish
                )
            return
        if answer is not None and listener.sticky_rewrites_response:
            listener.rewrite_response(endpoint.key, answer.headers)
            head = render_backend_head(answer)
        config = listener.config
        own_pong = None
        if config.keepalive.enabled:
            self.ka_prefix = KEEPALIVE_PREFIX + os.urandom(4).hex().encode() + b"-"
            own_pong = self._is_own_pong
        self.c2b = FrameTracker(config.limits.max_message_bytes, self._client_control, own_pong)
        self.b2c = FrameTracker(config.limits.max_message_bytes, self._backend_control, own_pong)
        self.state = State.TUNNEL
        rest = backend.attach()
        self.tunnel_at = self.loop.time()
        listener.tunnel_opened(self, self.tunnel_at - self.accepted_at)
        self.transport.write(head)
        self.idle_timeout = config.idle_timeout_seconds
        self.last_activity = self.tunnel_at
        listener.wheel.add(self, self.tunnel_at + self.idle_timeout)
        if config.keepalive.enabled:
            self.ka_timer = self.loop.call_later(
                config.keepalive.interval_seconds, self._keepalive_tick
            )
        if rest:
            self.backend_data(rest)
        if self.pending and self.state is State.TUNNEL:
            pending, self.pending = bytes(self.pending), bytearray()
            self.data_received(pending)
        if self.draining:
            self._arm_drain(config.drain_timeout_seconds)
        elif listener.should_drain(endpoint):
            self.drain(config.drain_timeout_seconds)

    def backend_data(self, data: bytes) -> None:
        """Bytes from the backend (called by BackendSide)."""
        if self.state is State.TUNNEL:
            self.last_activity = self.loop.time()
            self.bytes_b2c += len(data)
            b2c = self.b2c
            assert b2c is not None and self.transport is not None
            out = b2c.feed(data)
            if out:
                self.transport.write(out)
            if b2c.error is not None and not self.closing:
                self._frame_error(b2c.error)
        elif self.state is State.RELAY and self.transport is not None:
            if self.relay_remaining is not None:
                data = data[: self.relay_remaining]
                self.relay_remaining -= len(data)
            self.transport.write(data)
            if self.relay_remaining is not None and self.relay_remaining <= 0:
                self._finish()

    def backend_lost(self) -> None:
        """The backend's TCP connection ended (called by BackendSide)."""
        if self.state is State.RELAY:
            self._finish()
            return
        if self.state is not State.TUNNEL:
            return
        if self.closing or self.backend_sent_close:
            self._finish()
            return
        # The backend vanished without a Close: tell the client with 1014.
        self._record_close(CLOSE_BAD_GATEWAY, "proxy")
        self.backend_sent_close = True
        self._start_closing(CLOSE_BAD_GATEWAY, "backend failure", to_backend=False)

    # ---------------------------------------------------------------- control frames

    def _client_control(self, frame: ControlFrame) -> None:
        if frame.opcode == OP_CLOSE:
            self.client_sent_close = True
            if not self.close_initiator:
                self._record_close(frame.close_code, "client")
            self._maybe_done()
        elif frame.opcode == OP_PONG and self._is_own_pong(frame.payload):
            self.ka_client_pending = False

    def _backend_control(self, frame: ControlFrame) -> None:
        if frame.opcode == OP_CLOSE:
            self.backend_sent_close = True
            if not self.close_initiator:
                self._record_close(frame.close_code, "backend")
            self._maybe_done()
        elif frame.opcode == OP_PONG and self._is_own_pong(frame.payload):
            self.ka_backend_pending = False

    def _maybe_done(self) -> None:
        if not (self.client_sent_close and self.backend_sent_close):
            return
        if self.closing:
            self._finish()  # our Close was answered by both peers
        else:
            # Peers closed each other: the backend ends TCP; this is only a fallback.
            self.closing = True
            self._reset_close_timer(CLOSE_TIMEOUT)

    def _record_close(self, code: int, initiator: str) -> None:
        self.close_code = code
        self.close_initiator = initiator

    # ---------------------------------------------------------------- timers

    def deadline_due(self, now: float) -> float | None:
        """The idle deadline's slot came due (see deadlines.py): move it or close."""
        if self.state is not State.TUNNEL or self.closing:
            return None
        deadline = self.last_activity + self.idle_timeout
        if deadline > now:
            return deadline
        self.listener.count_idle_timeout()
        self.close(CLOSE_GOING_AWAY, "idle timeout")
        return None

    def _keepalive_tick(self) -> None:
        self.ka_timer = None
        if self.state is not State.TUNNEL or self.closing:
            return
        if self.client_sent_close or self.backend_sent_close:
            return  # a peer is closing: no frame may follow its Close
        keepalive = self.listener.config.keepalive
        self.ka_timer = self.loop.call_later(keepalive.interval_seconds, self._keepalive_tick)
        if self.ka_check is not None:
            return  # the previous ping still has time to be answered
        assert self.b2c is not None and self.c2b is not None
        assert self.transport is not None and self.backend is not None
        self.ka_seq += 1
        payload = self.ka_prefix + str(self.ka_seq).encode()
        self.ka_client_pending = self.ka_backend_pending = True
        to_client = self.b2c.inject_at_boundary(ping_frame(payload, mask=False))
        if to_client:
            self.transport.write(to_client)
        to_backend = self.c2b.inject_at_boundary(ping_frame(payload, mask=True))
        if to_backend:
            self.backend.transport.write(to_backend)  # type: ignore[union-attr]
        self.ka_check = self.loop.call_later(keepalive.timeout_seconds, self._keepalive_check)

    def _keepalive_check(self) -> None:
        self.ka_check = None
        if self.closing or self.state is not State.TUNNEL:
            return
        assert self.b2c is not None and self.c2b is not None
        # A ping still queued behind a long frame in flight was not sent yet: wait more.
        client_late = self.ka_client_pending and not self.b2c.injection_pending
        backend_late = self.ka_backend_pending and not self.c2b.injection_pending
        if client_late or backend_late:
            self.listener.count_keepalive_timeout()
            self.close(CLOSE_INTERNAL_ERROR, "keepalive timeout")
        elif self.ka_client_pending or self.ka_backend_pending:
            timeout = self.listener.config.keepalive.timeout_seconds
            self.ka_check = self.loop.call_later(timeout, self._keepalive_check)

    def _is_own_pong(self, payload: bytes) -> bool:
        """Pongs answering the proxy's pings carry its per-connection random prefix."""
        return bool(self.ka_prefix) and payload.startswith(self.ka_prefix)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # ---------------------------------------------------------------- closing

    def close(self, code: int, reason: str) -> None:
        """The proxy closes the tunnel: Close frames to both peers at frame boundaries."""
        if self.state is not State.TUNNEL:
            if self.state in (State.HEAD, State.CONNECTING):
                self._reject(Rejection(503, "Load balancer is shutting down"), "shutdown")
            return
        if self.closing:
            return
        self._record_close(code, "proxy")
        self._start_closing(code, reason, to_backend=not self.backend_sent_close)

    def drain(self, timeout: float) -> None:
        """Keep serving until `timeout` seconds from now, then close with 1001."""
        if self.draining or self.state is State.CLOSED:
            return
        self.draining = True
        self.listener.count_draining(+1)
        if self.state is State.TUNNEL:
            self._arm_drain(timeout)
        # A handshake in progress finishes; its tunnel drains when it opens.

    def _arm_drain(self, timeout: float) -> None:
        self.drain_timer = self.loop.call_later(timeout, self.close, CLOSE_GOING_AWAY, "going away")

    def _frame_error(self, error: FrameError) -> None:
        self._record_close(error.code, "proxy")
        self._start_closing(error.code, error.reason, to_backend=True)

    def _start_closing(self, code: int, reason: str, *, to_backend: bool) -> None:
        self.closing = True
        self._stop_keepalive()
        assert self.b2c is not None and self.c2b is not None and self.transport is not None
        out = self.b2c.close_at_boundary(close_frame(code, reason, mask=False))
        if out:
            self.transport.write(out)
        if to_backend and self.backend is not None and self.backend.transport is not None:
            out = self.c2b.close_at_boundary(close_frame(code, reason, mask=True))
            if out:
                self.backend.transport.write(out)
        else:
            self.c2b.stop()
        self._reset_close_timer(CLOSE_TIMEOUT)

    def _reset_close_timer(self, delay: float) -> None:
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(delay, self._finish)

    def _stop_keepalive(self) -> None:
        for handle in (self.ka_timer, self.ka_check):
            if handle is not None:
                handle.cancel()
        self.ka_timer = self.ka_check = None

    def _finish(self) -> None:
        """Close both TCP connections (buffered writes are flushed first)."""
        self.closing = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            # A client that never reads would keep close() waiting forever.
            self.loop.call_later(CLOSE_TIMEOUT, self._abort_if_stuck)
        if self.backend is not None:
            self.backend.abandon()

    def _abort_if_stuck(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        state = self.state
        self.state = State.CLOSED
        self.lost = True
        self.listener.wheel.discard(self)
        self._cancel_timer()
        self._stop_keepalive()
        for handle in (self.close_timer, self.drain_timer):
            if handle is not None:
                handle.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if state is State.TUNNEL:
            if not self.client_sent_close and not self.closing:
                # The client vanished: close the backend side cleanly with 1001.
                self._record_close(CLOSE_GOING_AWAY, "client")
                if self.c2b is not None and self.c2b.at_boundary and self.backend is not None:
                    transport = self.backend.transport
                    if transport is not None and not transport.is_closing():
                        transport.write(close_frame(CLOSE_GOING_AWAY, "client gone", mask=True))
            if self.backend is not None:
                self.backend.abandon()
        elif self.backend is not None:
            self.backend.abandon()
        if self.endpoint is not None:
            self.endpoint.active -= 1
        self.listener.release(self, state is State.TUNNEL)

    # ---------------------------------------------------------------- flow control

    def pause_writing(self) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.backend is not None and self.backend.transport is not None:
            self.backend.transport.resume_reading()

    def eof_received(self) -> bool | None:
        if self.state is State.TUNNEL and self.client_sent_close and not self.backend_sent_close:
            # The client closed cleanly and half-closed: keep writing so the backend's
            # Close reply reaches it (bounded by the close timer).
            self._reset_close_timer(CLOSE_TIMEOUT)
            return True
        return None  # close our side too; connection_lost does the rest

    # ---------------------------------------------------------------- stats

    @property
    def messages_c2b(self) -> int:
        return self.c2b.messages if self.c2b is not None else 0

    @property
    def messages_b2c(self) -> int:
        return self.b2c.messages if self.b2c is not None else 0


class _Labelled(Rejection):
    """A rejection carrying its metric reason label."""

    def __init__(self, inner: Rejection, label_text: str) -> None:
        super().__init__(inner.status, inner.reason, inner.headers)
        self.inner = inner
        self.label_text = label_text


class BackendSide(asyncio.Protocol):
    """The backend connection: collects the answer head, then hands bytes to ClientSide."""

    __slots__ = (
        "attached",
        "buffer",
        "client",
        "head",
        "lost",
        "transport",
    )

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: asyncio.Future[bytes] | None = client.loop.create_future()
        self.attached = False  # ClientSide took over: bytes go straight to it
        self.lost = False

    def itself(self) -> BackendSide:
        """Protocol factory for create_connection: this very instance."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.attached:
            self.client.backend_data(data)
            return
        self.buffer += data
        if self.head is None or self.head.done():
            return  # kept in buffer until the client side attaches
        end = self.buffer.find(HEAD_END)
        if end >= 0:
            head = bytes(self.buffer[: end + 4])
            del self.buffer[: end + 4]
            self.head.set_result(head)
        elif len(self.buffer) > MAX_BACKEND_HEAD:
            self.head.set_exception(ValueError("backend response head too large"))

    def attach(self) -> bytes:
        """From now on bytes go to the client side; return those that came early."""
        self.attached = True
        rest, self.buffer = bytes(self.buffer), bytearray()
        self.head = None  # the answer was consumed: free it for the connection's lifetime
        return rest

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.head is not None and not self.head.done():
            self.head.set_exception(ConnectionError("backend closed before answering"))
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
        if self.head is not None and not self.head.done():
            self.head.cancel()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
            self.client.loop.call_later(CLOSE_TIMEOUT, self._abort_if_stuck)

    def _abort_if_stuck(self) -> None:
        if not self.lost and self.transport is not None:
            self.transport.abort()
