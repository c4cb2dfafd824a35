"""The connection core: what one upgraded WebSocket connection does, without any I/O.

`Relay` owns both directions' frame trackers, the close handshake, keepalive, the idle,
drain and close deadlines, the choice of close code and the per-connection counters.
Bytes and the current time go in; bytes to forward come back from `client_data` and
`backend_data` (the hot path), and everything else (frames of the proxy's own, "close
this TCP connection", counts) waits in `to_client`, `to_backend` and `actions` for the
adapter (tunnel.py) to carry out when `pending` is set. `next_deadline()` says when
`tick()` must run next. No sockets, no event loop, no metrics objects here.

Close rules (RFC 6455 §7, and what a proxy adds):

- a peer's Close is relayed unchanged; once either peer has sent one, the close timer
  bounds the wait for the other, then both TCP connections close;
- the proxy's own close (idle, drain, keepalive, shutdown) sends Close frames to both
  peers at frame boundaries and waits for both replies or the close timer;
- a client's protocol error fails toward the backend first: the backend gets the Close,
  its remaining frames still reach the client until its Close (or the close timer), then
  the client is closed; a backend's protocol error closes both at once;
- a peer whose TCP connection ends without a Close: between frames the other gets a
  Close (1014 for a backend, 1001 for a client), mid-frame its TCP connection is closed
  at once because no Close can follow a partial frame. A vanished client counts as 1006.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Final

from dataplane.frames import (
    CLOSE_ABNORMAL,
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

KEEPALIVE_PREFIX: Final = b"wslb-ka-"
CLOSE_TIMEOUT: Final = 3.0  # default bound on waiting for a peer's Close reply

# actions: bit flags the adapter carries out, then clears
CLOSE_CLIENT: Final = 1  # close the client's TCP connection (after flushing)
CLOSE_BACKEND: Final = 2  # close the backend's TCP connection (after flushing)
COUNT_IDLE_TIMEOUT: Final = 4
COUNT_KEEPALIVE_TIMEOUT: Final = 8
RESUME_CLIENT: Final = 16  # the backend stopped reading for good: read the client again
DEADLINE_MOVED: Final = 32  # next_deadline() moved earlier: file it again

_NOTHING: Final[list[bytes]] = []  # shared, never appended to: see _send_client

CLIENT: Final = "client"
BACKEND: Final = "backend"
PROXY: Final = "proxy"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What a listener's config says about its connections (shared by all of them)."""

    max_message: int
    idle_timeout: float
    keepalive_interval: float = 0.0  # 0: no keepalive pings
    keepalive_timeout: float = 0.0
    close_timeout: float = CLOSE_TIMEOUT


_EXTENSIONS_FIELD: Final = re.compile(rb"\r\nsec-websocket-extensions:[ \t]*[!-~]", re.IGNORECASE)


def negotiated_extensions(head: bytes) -> bool:
    """Whether a backend's 101 head negotiated any extension (RSV bits then allowed): a
    Sec-WebSocket-Extensions field with a value, by its exact name (not a field such as
    X-Sec-WebSocket-Extensions that merely ends with it)."""
    return _EXTENSIONS_FIELD.search(head) is not None


class Relay:
    """One tunnelled connection's protocol state. See the module docstring for the rules."""

    __slots__ = (
        "actions",
        "b2c",
        "backend_eof",
        "backend_gone",
        "backend_sent_close",
        "bytes_b2c",
        "bytes_c2b",
        "c2b",
        "client_gone",
        "client_sent_close",
        "close_at",
        "close_code",
        "closed_by",
        "closing",
        "drain_at",
        "failing_client",
        "finished",
        "ka_backend_pending",
        "ka_check_at",
        "ka_client_pending",
        "ka_marks",
        "ka_next",
        "ka_prefix",
        "ka_seq",
        "last_activity",
        "opened_at",
        "pending",
        "settings",
        "to_backend",
        "to_client",
    )

    def __init__(self, settings: RelaySettings, now: float, *, extensions: bool = False) -> None:
        self.settings = settings
        self.opened_at = now
        self.last_activity = now
        self.bytes_c2b = 0
        self.bytes_b2c = 0
        keepalive = settings.keepalive_interval > 0
        self.ka_prefix = (
            KEEPALIVE_PREFIX + os.urandom(4).hex().encode() + b"-" if keepalive else b""
        )
        # The trackers call this relay back (it is their ControlSink): no bound methods.
        self.c2b = FrameTracker(
            settings.max_message, self, require_mask=True, extensions=extensions
        )
        self.b2c = FrameTracker(settings.max_message, self, extensions=extensions)
        self.ka_next = now + settings.keepalive_interval if keepalive else 0.0
        self.ka_check_at = 0.0
        self.ka_seq = 0
        self.ka_client_pending = False
        self.ka_backend_pending = False
        self.ka_marks = (0, 0)  # bytes each way when the ping went
        self.drain_at = 0.0
        self.close_at = 0.0  # 0: no close timer running
        self.closing = False  # the proxy sent (or queued) its own Close
        self.failing_client = 0  # the close code while failing a client's protocol error
        self.client_sent_close = False
        self.backend_sent_close = False
        self.client_gone = False
        self.backend_gone = False
        self.backend_eof = False
        self.finished = False
        self.close_code = CLOSE_NO_STATUS
        self.closed_by = ""
        # Frames of the proxy's own: rare, so both start as one shared empty list.
        self.to_client: list[bytes] = _NOTHING
        self.to_backend: list[bytes] = _NOTHING
        self.actions = 0
        self.pending = False

    # ------------------------------------------------------------------ bytes in

    def client_data(self, data: bytes, now: float) -> bytes:
        """Bytes from the client; returns what to write to the backend."""
        self.last_activity = now
        self.bytes_c2b += len(data)
        c2b = self.c2b
        out = c2b.feed(data)
        if c2b.error is not None and not self.failing_client and not self.finished:
            self._client_error(c2b.error, now)
        return out

    def backend_data(self, data: bytes, now: float) -> bytes:
        """Bytes from the backend; returns what to write to the client."""
        self.last_activity = now
        self.bytes_b2c += len(data)
        b2c = self.b2c
        out = b2c.feed(data)
        if b2c.error is not None and not self.closing and not self.finished:
            self._backend_error(b2c.error, now)
        return out

    @property
    def messages_c2b(self) -> int:
        return self.c2b.messages

    @property
    def messages_b2c(self) -> int:
        return self.b2c.messages

    # ------------------------------------------------------------------ peers' Close

    def control(self, tracker: FrameTracker, frame: ControlFrame) -> None:
        """A peer's control frame went by (frames.ControlSink): its Close, our pongs."""
        if tracker is self.c2b:
            if frame.opcode == OP_CLOSE:
                self.client_sent_close = True
                self._record(frame.close_code, CLIENT)
                self._peer_closed()
            elif frame.opcode == OP_PONG and self.is_own_pong(frame.payload):
                self.ka_client_pending = False
        elif frame.opcode == OP_CLOSE:
            self.backend_sent_close = True
            self._record(frame.close_code, BACKEND)
            self._peer_closed()
        elif frame.opcode == OP_PONG and self.is_own_pong(frame.payload):
            self.ka_backend_pending = False

    def _peer_closed(self) -> None:
        """A peer's Close went by (its callback runs inside a feed, before the bytes that
        hold it are returned to the adapter, which writes them before acting)."""
        if self.failing_client:
            if self.backend_sent_close and (self.c2b.lost or self.client_sent_close):
                self._finish()
        elif self.closing or self.backend_eof:
            if self._both_closed():
                self._finish()  # both answered the proxy's Close, or the backend is done
            elif not self.close_at:
                self._arm_close(self.last_activity)
        elif not self.close_at:
            self._arm_close(self.last_activity)

    def is_own_pong(self, payload: bytes) -> bool:
        """Pongs answering the proxy's pings carry its per-connection random prefix
        (frames.ControlSink: the tracker drops them from the stream)."""
        return bool(self.ka_prefix) and payload.startswith(self.ka_prefix)

    # ------------------------------------------------------------------ failures

    def _client_error(self, error: FrameError, now: float) -> None:
        """Fail toward the backend first; its frames keep reaching the client."""
        self._record(error.code, PROXY)
        self.failing_client = error.code
        self._stop_keepalive()
        if self.backend_gone or self.backend_sent_close:
            self._close_client(error.code, error.reason)
            return
        frame = close_frame(error.code, error.reason, mask=True)
        self._send_backend(self.c2b.close_at_boundary(frame))
        self._arm_close(now)

    def _backend_error(self, error: FrameError, now: float) -> None:
        self._record(error.code, PROXY)
        self._start_closing(error.code, error.reason, now)

    def _close_client(self, code: int, reason: str) -> None:
        """Close the client now: a Close frame when the stream allows one, then TCP."""
        if self.b2c.at_boundary and not self.b2c.stopped and not self.backend_sent_close:
            self._send_client(self.b2c.close_at_boundary(close_frame(code, reason, mask=False)))
        self._finish()

    # ------------------------------------------------------------------ TCP ends

    def backend_lost(self, now: float) -> None:
        """The backend's TCP connection ended."""
        self.backend_gone = True
        if self.finished:
            return
        if self.closing or self.backend_sent_close or self.failing_client:
            if self.failing_client and not self.backend_sent_close:
                self._close_client(self.failing_client, "protocol error")
            else:
                self._finish()
            return
        self._record(CLOSE_BAD_GATEWAY, PROXY)
        if not self.b2c.at_boundary:
            self._finish()  # mid-frame: no Close can follow, the client's TCP goes now
            return
        self._start_closing(CLOSE_BAD_GATEWAY, "backend failure", now)

    def backend_ended(self, now: float) -> bool:
        """The backend half-closed; True keeps the backend transport open for writing."""
        self.backend_eof = True
        if self.backend_sent_close and not self.finished:
            # It closed and stopped reading: what the client still sends has nowhere to
            # go; read the client again so its Close is seen (the close timer bounds it).
            self.c2b.stop()
            self._act(RESUME_CLIENT)
            if self.client_sent_close:
                self._finish()
            return True
        return False

    def client_lost(self) -> None:
        """The client's TCP connection ended (the adapter is tearing down)."""
        self.client_gone = True
        if self.finished:
            return
        if not self.client_sent_close and not self.closing and not self.failing_client:
            # Vanished without a Close: 1006 for the books, 1001 to the backend if the
            # stream is between frames (mid-frame its TCP connection just closes).
            self._record(CLOSE_ABNORMAL, CLIENT)
            if self.c2b.at_boundary and not self.c2b.stopped and not self.backend_gone:
                self._send_backend(
                    self.c2b.close_at_boundary(
                        close_frame(CLOSE_GOING_AWAY, "client gone", mask=True)
                    )
                )
        self._finish()

    def client_ended(self) -> bool:
        """The client half-closed; True keeps the client transport open for writing."""
        return self.client_sent_close and not self.backend_sent_close and not self.finished

    # ------------------------------------------------------------------ the proxy closes

    def close(self, code: int, reason: str, now: float) -> None:
        """The proxy closes: Close frames to both peers at frame boundaries."""
        if self.closing or self.finished:
            return
        self._record(code, PROXY)
        self._start_closing(code, reason, now)

    def drain(self, deadline: float) -> None:
        """Keep relaying until `deadline`, then close with 1001."""
        if not self.drain_at or deadline < self.drain_at:
            self.drain_at = deadline
            self._act(DEADLINE_MOVED)

    def _start_closing(self, code: int, reason: str, now: float) -> None:
        """Send the proxy's Close to each peer that has not received one yet."""
        self.closing = True
        self._stop_keepalive()
        if not self.client_gone and not self.backend_sent_close:
            self._send_client(self.b2c.close_at_boundary(close_frame(code, reason, mask=False)))
        else:
            self.b2c.stop()  # the client got the backend's Close: nothing may follow it
        if not self.backend_gone and not self.client_sent_close:
            self._send_backend(self.c2b.close_at_boundary(close_frame(code, reason, mask=True)))
        else:
            self.c2b.stop()
        if self._both_closed():
            self._finish()
            return
        self._arm_close(now)

    def _both_closed(self) -> bool:
        client = self.client_sent_close or self.client_gone
        return client and (self.backend_sent_close or self.backend_gone)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When `tick` must run next; None once finished."""
        if self.finished:
            return None
        if self.close_at:
            return self.close_at
        deadline = self.last_activity + self.settings.idle_timeout
        if self.drain_at and self.drain_at < deadline:
            deadline = self.drain_at
        if self.ka_next and self.ka_next < deadline:
            deadline = self.ka_next
        if self.ka_check_at and self.ka_check_at < deadline:
            deadline = self.ka_check_at
        return deadline

    def tick(self, now: float) -> None:
        """Run every deadline that is due at `now`."""
        if self.finished:
            return
        if self.close_at:
            if now >= self.close_at:
                self.close_at = 0.0
                self._close_timer_expired()
            return
        if self.drain_at and now >= self.drain_at:
            self.close(CLOSE_GOING_AWAY, "going away", now)
            return
        if now >= self.last_activity + self.settings.idle_timeout:
            self._act(COUNT_IDLE_TIMEOUT)
            self.close(CLOSE_GOING_AWAY, "idle timeout", now)
            return
        if self.ka_check_at and now >= self.ka_check_at:
            self._keepalive_check(now)
            if self.closing:
                return
        if self.ka_next and now >= self.ka_next:
            self._keepalive_ping(now)

    def _close_timer_expired(self) -> None:
        if self.failing_client and not self.backend_sent_close:
            self._close_client(self.failing_client, "protocol error")
        else:
            self._finish()

    def _keepalive_ping(self, now: float) -> None:
        interval = self.settings.keepalive_interval
        scheduled = self.ka_next
        while self.ka_next <= now:
            self.ka_next += interval
        if self.client_sent_close or self.backend_sent_close:
            self.ka_next = 0.0  # a peer is closing: no frame may follow its Close
            return
        if self.ka_check_at:
            return  # the previous ping still has time to be answered
        self.ka_seq += 1
        payload = self.ka_prefix + str(self.ka_seq).encode()
        self.ka_client_pending = self.ka_backend_pending = True
        self.ka_marks = (self.bytes_c2b, self.bytes_b2c)
        self._send_client(self.b2c.inject_at_boundary(ping_frame(payload, mask=False)))
        self._send_backend(self.c2b.inject_at_boundary(ping_frame(payload, mask=True)))
        # Counted from when the ping was due, so a late tick never stretches the bound.
        self.ka_check_at = scheduled + self.settings.keepalive_timeout

    def _keepalive_check(self, now: float) -> None:
        self.ka_check_at = 0.0
        # A ping still queued behind a long frame in flight was not sent yet, and a peer
        # still sending bytes (its pong queued behind its own frame) is alive: wait more.
        c2b_mark, b2c_mark = self.ka_marks
        client_late = (
            self.ka_client_pending and not self.b2c.injection_pending and self.bytes_c2b == c2b_mark
        )
        backend_late = (
            self.ka_backend_pending
            and not self.c2b.injection_pending
            and self.bytes_b2c == b2c_mark
        )
        if client_late or backend_late:
            self._act(COUNT_KEEPALIVE_TIMEOUT)
            self.close(CLOSE_INTERNAL_ERROR, "keepalive timeout", now)
        elif self.ka_client_pending or self.ka_backend_pending:
            self.ka_marks = (self.bytes_c2b, self.bytes_b2c)
            self.ka_check_at = now + self.settings.keepalive_timeout

    def _stop_keepalive(self) -> None:
        self.ka_next = self.ka_check_at = 0.0

    def _arm_close(self, now: float) -> None:
        at = now + self.settings.close_timeout
        if not self.close_at or at < self.close_at:
            self.close_at = at
            self._act(DEADLINE_MOVED)

    # ------------------------------------------------------------------ outputs

    def _record(self, code: int, by: str) -> None:
        if not self.closed_by:
            self.close_code = code
            self.closed_by = by

    def _send_client(self, data: bytes) -> None:
        if data:
            if self.to_client is _NOTHING:
                self.to_client = []
            self.to_client.append(data)
            self.pending = True

    def _send_backend(self, data: bytes) -> None:
        if data:
            if self.to_backend is _NOTHING:
                self.to_backend = []
            self.to_backend.append(data)
            self.pending = True

    def _act(self, action: int) -> None:
        self.actions |= action
        self.pending = True

    def _finish(self) -> None:
        self.finished = True
        self._stop_keepalive()
        self.close_at = self.drain_at = 0.0
        self._act(CLOSE_CLIENT | CLOSE_BACKEND)

    def take(self) -> tuple[list[bytes], list[bytes], int]:
        """Hand the waiting outputs to the adapter and clear them."""
        out = (self.to_client, self.to_backend, self.actions)
        self.to_client = self.to_backend = _NOTHING
        self.actions = 0
        self.pending = False
        return out


class ConnectionRecord:
    """One client connection, complete at its end: what an access log line needs.

    `status` is the HTTP status the client got (101 once tunnelled, 0 if it left before
    any answer); `rejection` the metric label when the load balancer refused it. Times
    are seconds; `started` is wall-clock (epoch). `closed_by` is client, backend, proxy
    or unknown for a tunnel, empty otherwise. The request's fields are empty when the
    connection ended before its head was parsed; `target` keeps the query string (the
    access log drops it unless asked) and `forwarded_for` is the X-Forwarded-For chain
    as sent to the backend.

    A connection hands over its request `head` as received instead of the four request
    fields: the access log's writer reads them from it (`head_summary`), off the
    connection's path, and appends `appended_for` (the client address this proxy added to
    X-Forwarded-For, or "") to the chain. A plain class, not a dataclass: compiled, its
    constructor is one C call (a dataclass's generated __init__ ran interpreted, ~30k
    instructions per connection).
    """

    def __init__(
        self,
        client: str,
        client_port: int,
        listener: str,
        backend: str,
        status: int,
        rejection: str,
        started: float,
        duration: float,
        handshake_seconds: float,
        bytes_c2b: int,
        bytes_b2c: int,
        messages_c2b: int,
        messages_b2c: int,
        close_code: int,
        closed_by: str,
        method: str = "",
        host: str = "",
        target: str = "",
        forwarded_for: str = "",
        head: bytes = b"",
        appended_for: str = "",
    ) -> None:
        self.client = client
        self.client_port = client_port
        self.listener = listener
        self.backend = backend
        self.status = status
        self.rejection = rejection
        self.started = started
        self.duration = duration
        self.handshake_seconds = handshake_seconds
        self.bytes_c2b = bytes_c2b
        self.bytes_b2c = bytes_b2c
        self.messages_c2b = messages_c2b
        self.messages_b2c = messages_b2c
        self.close_code = close_code
        self.closed_by = closed_by
        self.method = method
        self.host = host
        self.target = target
        self.forwarded_for = forwarded_for
        self.head = head
        self.appended_for = appended_for
