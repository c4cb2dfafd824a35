"""The connection core: what one upgraded WebSocket connection does, without any I/O.

`Relay` owns both directions' frame state (it is a `frames.Frames`), the close handshake,
keepalive, the idle, drain and close deadlines, the choice of close code and the
per-connection counters: one object per connection, the rare state in a `_Lifecycle`
made on first need. Bytes and the current time go in; bytes to forward come back from
`client_data` and `backend_data` (the hot path), and everything else (frames of the
proxy's own, "close this TCP connection", counts) waits for the adapter (tunnel.py) to
`take()` and carry out when `pending` is set. `next_deadline()` says when
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
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from _typeshed import IdentityFunction

from dataplane.frames import (
    B2C,
    C2B,
    CLOSE_ABNORMAL,
    CLOSE_BAD_GATEWAY,
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NO_STATUS,
    OP_CLOSE,
    OP_PONG,
    ControlFrame,
    FrameError,
    Frames,
    close_frame,
    ping_frame,
)
from dataplane.frames import CLOSE_TIMEOUT as CLOSE_TIMEOUT
from dataplane.frames import RelaySettings as RelaySettings  # where the core's users find them

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # not among the runtime dependencies: without it, a no-op (compiled,
    # mypyc reads the decorator itself and never calls it)

    def mypyc_attr(*attrs: str, **kwattrs: object) -> IdentityFunction:
        return lambda cls: cls


KEEPALIVE_PREFIX: Final = b"wslb-ka-"

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


_EXTENSIONS_FIELD: Final = re.compile(rb"\r\nsec-websocket-extensions:[ \t]*[!-~]", re.IGNORECASE)


def negotiated_extensions(head: bytes) -> bool:
    """Whether a backend's 101 head negotiated any extension (RSV bits then allowed): a
    Sec-WebSocket-Extensions field with a value, by its exact name (not a field such as
    X-Sec-WebSocket-Extensions that merely ends with it)."""
    return _EXTENSIONS_FIELD.search(head) is not None


@mypyc_attr(acyclic=True)
class _Lifecycle:
    """What a connection holds once anything beyond relaying happens: keepalive, a peer's
    or the proxy's close, a drain, the proxy's own frames and actions waiting for the
    adapter. Made on first need (from the start with keepalive on), so an idle
    connection without keepalive holds none of it."""

    __slots__ = (
        "actions",
        "backend_eof",
        "backend_gone",
        "backend_sent_close",
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
        "to_backend",
        "to_client",
    )

    def __init__(self) -> None:
        self.ka_prefix = b""  # the random prefix of the proxy's pings: its pongs carry it
        self.ka_next = 0.0
        self.ka_check_at = 0.0
        self.drain_at = 0.0
        self.close_at = 0.0  # 0: no close timer running
        self.ka_seq = 0
        self.ka_marks = (0, 0)  # bytes each way when the ping went
        self.failing_client = 0  # the close code while failing a client's protocol error
        self.close_code = CLOSE_NO_STATUS
        self.closed_by = ""
        # Frames of the proxy's own: rare, so both start as one shared empty list.
        self.to_client: list[bytes] = _NOTHING
        self.to_backend: list[bytes] = _NOTHING
        self.actions = 0
        # The flags last: compiled, they pack into one word.
        self.ka_client_pending = False
        self.ka_backend_pending = False
        self.closing = False  # the proxy sent (or queued) its own Close
        self.client_sent_close = False
        self.backend_sent_close = False
        self.client_gone = False
        self.backend_gone = False
        self.backend_eof = False
        self.finished = False


@mypyc_attr(acyclic=True)
class Relay(Frames):
    """One tunnelled connection's protocol state. See the module docstring for the rules.

    One object per connection: both directions' frame state is inherited from `Frames`
    (which calls this relay's `control` and `is_own_pong` for the control frames it sees),
    and everything beyond relaying waits in a `_Lifecycle` made on first need.
    """

    __slots__ = (
        "_life",
        "bytes_b2c",
        "bytes_c2b",
        "last_activity",
        "opened_at",
        "pending",
    )

    def __init__(self, settings: RelaySettings, now: float, *, extensions: bool = False) -> None:
        super().__init__(settings, extensions=extensions)
        # First: compiled, this flag shares a word with Frames' last one (struct order).
        self.pending = False
        self.opened_at = now
        self.last_activity = now
        self.bytes_c2b = 0
        self.bytes_b2c = 0
        self._life: _Lifecycle | None = None
        if settings.keepalive_interval > 0:
            life = self._life = _Lifecycle()
            life.ka_prefix = KEEPALIVE_PREFIX + os.urandom(4).hex().encode() + b"-"
            life.ka_next = now + settings.keepalive_interval

    def _lifecycle(self) -> _Lifecycle:
        life = self._life
        if life is None:
            life = self._life = _Lifecycle()
        return life

    # ------------------------------------------------------------------ bytes in

    def client_data(self, data: bytes, now: float) -> bytes:
        """Bytes from the client; returns what to write to the backend."""
        self.last_activity = now
        self.bytes_c2b += len(data)
        out = self.feed(C2B, data)
        held = self._held_c2b  # read here, not through error(): one call less per chunk
        if held is not None and held.error is not None:
            error = held.error
            life = self._lifecycle()
            if not life.failing_client and not life.finished:
                self._client_error(error, now)
        return out

    def backend_data(self, data: bytes, now: float) -> bytes:
        """Bytes from the backend; returns what to write to the client."""
        self.last_activity = now
        self.bytes_b2c += len(data)
        out = self.feed(B2C, data)
        held = self._held_b2c  # read here, not through error(): one call less per chunk
        if held is not None and held.error is not None:
            error = held.error
            life = self._lifecycle()
            if not life.closing and not life.finished:
                self._backend_error(error, now)
        return out

    @property
    def close_code(self) -> int:
        life = self._life
        return CLOSE_NO_STATUS if life is None else life.close_code

    @property
    def closed_by(self) -> str:
        """client, backend or proxy: who closed first; "" while nobody has."""
        life = self._life
        return "" if life is None else life.closed_by

    # ------------------------------------------------------------------ peers' Close

    def control(self, c2b: bool, frame: ControlFrame) -> None:
        """A peer's control frame went by (see Frames): its Close, our pongs."""
        if frame.opcode == OP_CLOSE:
            life = self._lifecycle()
            if c2b:
                life.client_sent_close = True
                self._record(frame.close_code, CLIENT)
            else:
                life.backend_sent_close = True
                self._record(frame.close_code, BACKEND)
            self._peer_closed(life)
        elif frame.opcode == OP_PONG and self.is_own_pong(frame.payload):
            life = self._lifecycle()
            if c2b:
                life.ka_client_pending = False
            else:
                life.ka_backend_pending = False

    def _peer_closed(self, life: _Lifecycle) -> None:
        """A peer's Close went by (its callback runs inside a feed, before the bytes that
        hold it are returned to the adapter, which writes them before acting)."""
        if life.failing_client:
            if life.backend_sent_close and (self.lost(C2B) or life.client_sent_close):
                self._finish()
        elif life.closing or life.backend_eof:
            if self._both_closed(life):
                self._finish()  # both answered the proxy's Close, or the backend is done
            elif not life.close_at:
                self._arm_close(self.last_activity)
        elif not life.close_at:
            self._arm_close(self.last_activity)

    def is_own_pong(self, payload: bytes) -> bool:
        """Pongs answering the proxy's pings carry its per-connection random prefix
        (see Frames: they are dropped from the stream)."""
        life = self._life
        return life is not None and bool(life.ka_prefix) and payload.startswith(life.ka_prefix)

    # ------------------------------------------------------------------ failures

    def _client_error(self, error: FrameError, now: float) -> None:
        """Fail toward the backend first; its frames keep reaching the client."""
        self._record(error.code, PROXY)
        life = self._lifecycle()
        life.failing_client = error.code
        self._stop_keepalive()
        if life.backend_gone or life.backend_sent_close:
            self._close_client(error.code, error.reason)
            return
        frame = close_frame(error.code, error.reason, mask=True)
        self._send_backend(self.close_at_boundary(C2B, frame))
        self._arm_close(now)

    def _backend_error(self, error: FrameError, now: float) -> None:
        self._record(error.code, PROXY)
        self._start_closing(error.code, error.reason, now)

    def _close_client(self, code: int, reason: str) -> None:
        """Close the client now: a Close frame when the stream allows one, then TCP."""
        life = self._lifecycle()
        if self.at_boundary(B2C) and not self.stopped(B2C) and not life.backend_sent_close:
            self._send_client(self.close_at_boundary(B2C, close_frame(code, reason, mask=False)))
        self._finish()

    # ------------------------------------------------------------------ TCP ends

    def backend_lost(self, now: float) -> None:
        """The backend's TCP connection ended."""
        life = self._lifecycle()
        life.backend_gone = True
        if life.finished:
            return
        if life.closing or life.backend_sent_close or life.failing_client:
            if life.failing_client and not life.backend_sent_close:
                self._close_client(life.failing_client, "protocol error")
            else:
                self._finish()
            return
        self._record(CLOSE_BAD_GATEWAY, PROXY)
        if not self.at_boundary(B2C):
            self._finish()  # mid-frame: no Close can follow, the client's TCP goes now
            return
        self._start_closing(CLOSE_BAD_GATEWAY, "backend failure", now)

    def backend_ended(self, now: float) -> bool:
        """The backend half-closed; True keeps the backend transport open for writing."""
        life = self._lifecycle()
        life.backend_eof = True
        if life.backend_sent_close and not life.finished:
            # It closed and stopped reading: what the client still sends has nowhere to
            # go; read the client again so its Close is seen (the close timer bounds it).
            self.stop(C2B)
            self._act(RESUME_CLIENT)
            if life.client_sent_close:
                self._finish()
            return True
        return False

    def client_lost(self) -> None:
        """The client's TCP connection ended (the adapter is tearing down)."""
        life = self._lifecycle()
        life.client_gone = True
        if life.finished:
            return
        if not life.client_sent_close and not life.closing and not life.failing_client:
            # Vanished without a Close: 1006 for the books, 1001 to the backend if the
            # stream is between frames (mid-frame its TCP connection just closes).
            self._record(CLOSE_ABNORMAL, CLIENT)
            if self.at_boundary(C2B) and not self.stopped(C2B) and not life.backend_gone:
                self._send_backend(
                    self.close_at_boundary(
                        C2B, close_frame(CLOSE_GOING_AWAY, "client gone", mask=True)
                    )
                )
        self._finish()

    def client_ended(self) -> bool:
        """The client half-closed; True keeps the client transport open for writing."""
        life = self._life
        return (
            life is not None
            and life.client_sent_close
            and not life.backend_sent_close
            and not life.finished
        )

    # ------------------------------------------------------------------ the proxy closes

    def close(self, code: int, reason: str, now: float) -> None:
        """The proxy closes: Close frames to both peers at frame boundaries."""
        life = self._life
        if life is not None and (life.closing or life.finished):
            return
        self._record(code, PROXY)
        self._start_closing(code, reason, now)

    def drain(self, deadline: float) -> None:
        """Keep relaying until `deadline`, then close with 1001."""
        life = self._lifecycle()
        if not life.drain_at or deadline < life.drain_at:
            life.drain_at = deadline
            self._act(DEADLINE_MOVED)

    def _start_closing(self, code: int, reason: str, now: float) -> None:
        """Send the proxy's Close to each peer that has not received one yet."""
        life = self._lifecycle()
        life.closing = True
        self._stop_keepalive()
        if not life.client_gone and not life.backend_sent_close:
            self._send_client(self.close_at_boundary(B2C, close_frame(code, reason, mask=False)))
        else:
            self.stop(B2C)  # the client got the backend's Close: nothing may follow it
        if not life.backend_gone and not life.client_sent_close:
            self._send_backend(self.close_at_boundary(C2B, close_frame(code, reason, mask=True)))
        else:
            self.stop(C2B)
        if self._both_closed(life):
            self._finish()
            return
        self._arm_close(now)

    def _both_closed(self, life: _Lifecycle) -> bool:
        client = life.client_sent_close or life.client_gone
        return client and (life.backend_sent_close or life.backend_gone)

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """When `tick` must run next; None once finished."""
        deadline = self.last_activity + self.settings.idle_timeout
        life = self._life
        if life is None:
            return deadline
        if life.finished:
            return None
        if life.close_at:
            return life.close_at
        if life.drain_at and life.drain_at < deadline:
            deadline = life.drain_at
        if life.ka_next and life.ka_next < deadline:
            deadline = life.ka_next
        if life.ka_check_at and life.ka_check_at < deadline:
            deadline = life.ka_check_at
        return deadline

    def tick(self, now: float) -> None:
        """Run every deadline that is due at `now`."""
        life = self._life
        if life is not None:
            if life.finished:
                return
            if life.close_at:
                if now >= life.close_at:
                    life.close_at = 0.0
                    self._close_timer_expired(life)
                return
            if life.drain_at and now >= life.drain_at:
                self.close(CLOSE_GOING_AWAY, "going away", now)
                return
        if now >= self.last_activity + self.settings.idle_timeout:
            self._act(COUNT_IDLE_TIMEOUT)
            self.close(CLOSE_GOING_AWAY, "idle timeout", now)
            return
        if life is None:
            return
        if life.ka_check_at and now >= life.ka_check_at:
            self._keepalive_check(life, now)
            if life.closing:
                return
        if life.ka_next and now >= life.ka_next:
            self._keepalive_ping(life, now)

    def _close_timer_expired(self, life: _Lifecycle) -> None:
        if life.failing_client and not life.backend_sent_close:
            self._close_client(life.failing_client, "protocol error")
        else:
            self._finish()

    def _keepalive_ping(self, life: _Lifecycle, now: float) -> None:
        interval = self.settings.keepalive_interval
        scheduled = life.ka_next
        while life.ka_next <= now:
            life.ka_next += interval
        if life.client_sent_close or life.backend_sent_close:
            life.ka_next = 0.0  # a peer is closing: no frame may follow its Close
            return
        if life.ka_check_at:
            return  # the previous ping still has time to be answered
        life.ka_seq += 1
        payload = life.ka_prefix + str(life.ka_seq).encode()
        life.ka_client_pending = life.ka_backend_pending = True
        life.ka_marks = (self.bytes_c2b, self.bytes_b2c)
        self._send_client(self.inject_at_boundary(B2C, ping_frame(payload, mask=False)))
        self._send_backend(self.inject_at_boundary(C2B, ping_frame(payload, mask=True)))
        # Counted from when the ping was due, so a late tick never stretches the bound.
        life.ka_check_at = scheduled + self.settings.keepalive_timeout

    def _keepalive_check(self, life: _Lifecycle, now: float) -> None:
        life.ka_check_at = 0.0
        # A ping still queued behind a long frame in flight was not sent yet, and a peer
        # still sending bytes (its pong queued behind its own frame) is alive: wait more.
        c2b_mark, b2c_mark = life.ka_marks
        client_late = (
            life.ka_client_pending
            and not self.injection_pending(B2C)
            and self.bytes_c2b == c2b_mark
        )
        backend_late = (
            life.ka_backend_pending
            and not self.injection_pending(C2B)
            and self.bytes_b2c == b2c_mark
        )
        if client_late or backend_late:
            self._act(COUNT_KEEPALIVE_TIMEOUT)
            self.close(CLOSE_INTERNAL_ERROR, "keepalive timeout", now)
        elif life.ka_client_pending or life.ka_backend_pending:
            life.ka_marks = (self.bytes_c2b, self.bytes_b2c)
            life.ka_check_at = now + self.settings.keepalive_timeout

    def _stop_keepalive(self) -> None:
        life = self._life
        if life is not None:
            life.ka_next = life.ka_check_at = 0.0

    def _arm_close(self, now: float) -> None:
        life = self._lifecycle()
        at = now + self.settings.close_timeout
        if not life.close_at or at < life.close_at:
            life.close_at = at
            self._act(DEADLINE_MOVED)

    # ------------------------------------------------------------------ outputs

    def _record(self, code: int, by: str) -> None:
        life = self._lifecycle()
        if not life.closed_by:
            life.close_code = code
            life.closed_by = by

    def _send_client(self, data: bytes) -> None:
        if data:
            life = self._lifecycle()
            if life.to_client is _NOTHING:
                life.to_client = []
            life.to_client.append(data)
            self.pending = True

    def _send_backend(self, data: bytes) -> None:
        if data:
            life = self._lifecycle()
            if life.to_backend is _NOTHING:
                life.to_backend = []
            life.to_backend.append(data)
            self.pending = True

    def _act(self, action: int) -> None:
        self._lifecycle().actions |= action
        self.pending = True

    def _finish(self) -> None:
        life = self._lifecycle()
        life.finished = True
        self._stop_keepalive()
        life.close_at = life.drain_at = 0.0
        self._act(CLOSE_CLIENT | CLOSE_BACKEND)

    def take(self) -> tuple[list[bytes], list[bytes], int]:
        """Hand the waiting outputs to the adapter and clear them."""
        self.pending = False
        life = self._life
        if life is None:
            return _NOTHING, _NOTHING, 0
        out = (life.to_client, life.to_backend, life.actions)
        life.to_client = life.to_backend = _NOTHING
        life.actions = 0
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
