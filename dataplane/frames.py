"""Frame tracking for both directions of a WebSocket tunnel, and frames the proxy writes itself.

`Frames` reads frame headers only: data payloads are counted and skipped, never unmasked
or copied. That is enough to count messages, enforce a maximum message size, find frame
boundaries where the proxy may inject its own ping or close frames, and swallow the pongs
that answer the proxy's own pings. Control frames (at most 125 bytes of payload) are held
until complete so they can be inspected; that is the only data it buffers.

Sans-I/O: no sockets, no event loop. The tunnel feeds bytes in and writes what comes
out. Both directions live in one object, and the relay is that object (a subclass): per
connection one header and four integers a direction, not two tracker objects calling
back into the relay (measured, compiled: relay and trackers 568 bytes per connection
before, the one object 160 now). What only some connections need (a split header, a
held control frame, queued frames, an error) sits in a per-direction `_Held` made on
demand and dropped once quiet.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

if TYPE_CHECKING:
    from _typeshed import IdentityFunction

try:
    from mypy_extensions import mypyc_attr
except ImportError:  # not among the runtime dependencies: without it, a no-op (compiled,
    # mypyc reads the decorator itself and never calls it)

    def mypyc_attr(*attrs: str, **kwattrs: object) -> IdentityFunction:
        return lambda cls: cls


OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_NO_STATUS: Final = 1005
CLOSE_ABNORMAL: Final = 1006
CLOSE_MESSAGE_TOO_BIG: Final = 1009
CLOSE_INTERNAL_ERROR: Final = 1011
CLOSE_TRY_AGAIN_LATER: Final = 1013
CLOSE_BAD_GATEWAY: Final = 1014

CLOSE_TIMEOUT: Final = 3.0  # default bound on waiting for a peer's Close reply


@dataclass(frozen=True, slots=True)
class RelaySettings:
    """What a listener's config says about its connections (shared by all of them). Here
    because `Frames` reads `max_message` from it: one pointer per connection for all."""

    max_message: int
    idle_timeout: float
    keepalive_interval: float = 0.0  # 0: no keepalive pings
    keepalive_timeout: float = 0.0
    close_timeout: float = CLOSE_TIMEOUT


#: The two directions, as the `c2b` argument of Frames' methods.
C2B: Final = True  # client to backend: frames must be masked
B2C: Final = False

_RSV: Final = 0x70  # the reserved bits of a frame's first byte

_EMPTY: Final = b""
_NO_FRAMES: Final[list[bytes]] = []  # shared and never appended to: see inject_at_boundary


@mypyc_attr(acyclic=True)
class ControlFrame:
    """A complete control frame seen on the stream, payload already unmasked. A plain
    class, not a dataclass: compiled, its constructor is one C call (a dataclass's
    generated __init__ runs interpreted: 3.4k instructions per frame, measured)."""

    __slots__ = ("opcode", "payload")

    def __init__(self, opcode: int, payload: bytes) -> None:
        self.opcode = opcode
        self.payload = payload

    @property
    def close_code(self) -> int:
        payload = self.payload
        if self.opcode != OP_CLOSE or len(payload) < 2:
            return CLOSE_NO_STATUS
        return (payload[0] << 8) | payload[1]

    @property
    def close_reason(self) -> str:
        return self.payload[2:].decode("utf-8", "replace")


class FrameError(Exception):
    """The stream broke a rule the proxy enforces; `code` is the close code to send."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ControlSink(Protocol):
    """Who hears about a standalone `Frames`' control frames (the tests' recorder; the
    relay, a `Frames` itself, overrides `control` and `is_own_pong` instead). It must not
    hold the `Frames`: compiled, `Frames` is outside the cyclic GC (acyclic)."""

    def control(self, c2b: bool, frame: ControlFrame) -> None:
        """A whole control frame went by in direction `c2b` (True: client to backend)."""

    def is_own_pong(self, payload: bytes) -> bool:
        """Whether a pong answers the proxy's own ping: it is then dropped from the stream."""


@mypyc_attr(acyclic=True)
class _Held:
    """One direction's rare framing state: a header split across reads, a control frame
    in pieces, frames queued for the next boundary, an error, a stop. Made when first
    needed and dropped once quiet again, so an idle connection holds none of it."""

    __slots__ = (
        "ctrl",
        "ctrl_need",
        "error",
        "head",
        "inject",
        "lost",
        "sink",
        "stop_after_inject",
        "stopped",
    )

    def __init__(self, sink: ControlSink | None) -> None:
        self.head: bytes | bytearray = _EMPTY
        self.ctrl: bytearray | None = None  # control frame being collected
        self.ctrl_need = 0
        self.inject: list[bytes] = _NO_FRAMES
        self.error: FrameError | None = None
        self.sink = sink
        self.lost = False
        self.stopped = False
        self.stop_after_inject = False

    @property
    def quiet(self) -> bool:
        """Nothing held: the direction can go back to the fast paths (lost implies error,
        stop_after_inject a queued frame)."""
        return (
            not self.head
            and self.ctrl is None
            and not self.inject
            and self.error is None
            and not self.stopped
            and self.sink is None
        )


@mypyc_attr(acyclic=True)
class Frames:
    """Follows frame boundaries in both directions of one connection.

    `feed(c2b, data)` returns the bytes to forward. Normally that is `data` itself; it
    differs only when a control frame is held back or dropped, or when bytes were
    injected at a boundary via `inject_at_boundary`. The client-to-backend direction
    (`C2B`) requires masked frames (RFC 6455 §5.1); RSV bits are allowed only with an
    extension negotiated in the 101 (§5.2; any extension: the proxy cannot know which
    bits it uses).

    Each direction's hot state is four integers in this object (the payload bytes still
    to pass, the message's size so far, messages, frames); everything rarer sits in a
    `_Held` made on demand. The relay subclasses this: one object per connection.
    Compiled it is acyclic (no GC header, 16 bytes): nothing it holds leads back to it.
    """

    __slots__ = (
        "_held_b2c",
        "_held_c2b",
        "extensions",
        "frames_b2c",
        "frames_c2b",
        "message_bytes_b2c",
        "message_bytes_c2b",
        "messages_b2c",
        "messages_c2b",
        "settings",
        "skip_b2c",
        "skip_c2b",
    )

    def __init__(
        self, settings: RelaySettings, *, extensions: bool = True, sink: ControlSink | None = None
    ) -> None:
        self.settings = settings  # max_message: the limit on a message's size
        self.skip_c2b = 0  # payload bytes of the current data frame still to pass through
        self.message_bytes_c2b = 0
        self.messages_c2b = 0
        self.frames_c2b = 0
        self.skip_b2c = 0
        self.message_bytes_b2c = 0
        self.messages_b2c = 0
        self.frames_b2c = 0
        self._held_c2b: _Held | None = None if sink is None else _Held(sink)
        self._held_b2c: _Held | None = None if sink is None else _Held(sink)
        # Last: compiled, a flag packs with the relay's first (struct order).
        self.extensions = extensions

    # ------------------------------------------------------------------ hooks

    def control(self, c2b: bool, frame: ControlFrame) -> None:
        """A whole control frame went by in direction `c2b` (the relay overrides this)."""
        held = self._held(c2b)
        if held is not None and held.sink is not None:
            held.sink.control(c2b, frame)

    def is_own_pong(self, payload: bytes) -> bool:
        """Whether a pong answers the proxy's own ping (the relay overrides this)."""
        held = self._held_c2b
        return held is not None and held.sink is not None and held.sink.is_own_pong(payload)

    # ------------------------------------------------------------------ per direction

    def _held(self, c2b: bool) -> _Held | None:
        return self._held_c2b if c2b else self._held_b2c

    def _hold(self, c2b: bool) -> _Held:
        """The direction's rare state, made on first use."""
        held = self._held_c2b if c2b else self._held_b2c
        if held is None:
            held = _Held(None)
            if c2b:
                self._held_c2b = held
            else:
                self._held_b2c = held
        return held

    def _release(self, c2b: bool, held: _Held) -> None:
        """Drop a direction's rare state once nothing is held in it."""
        if held.quiet:
            if c2b:
                self._held_c2b = None
            else:
                self._held_b2c = None

    def _store(self, c2b: bool, skip: int, message_bytes: int, frames: int, messages: int) -> None:
        if c2b:
            self.skip_c2b = skip
            self.message_bytes_c2b = message_bytes
            self.frames_c2b = frames
            self.messages_c2b = messages
        else:
            self.skip_b2c = skip
            self.message_bytes_b2c = message_bytes
            self.frames_b2c = frames
            self.messages_b2c = messages

    def at_boundary(self, c2b: bool) -> bool:
        """Whether what was forwarded so far ends on a frame boundary. After an error
        nothing past the start of the offending frame was forwarded, so it does."""
        held = self._held_c2b if c2b else self._held_b2c
        if held is not None:
            if held.error is not None:
                return True
            if held.head or held.ctrl is not None:
                return False
        return (self.skip_c2b if c2b else self.skip_b2c) == 0

    def error(self, c2b: bool) -> FrameError | None:
        """The rule the direction's stream broke, if any."""
        held = self._held_c2b if c2b else self._held_b2c
        return None if held is None else held.error

    def lost(self, c2b: bool) -> bool:
        """Framing can no longer be followed (after a protocol error): nothing more is seen."""
        held = self._held_c2b if c2b else self._held_b2c
        return held is not None and held.lost

    def stopped(self, c2b: bool) -> bool:
        held = self._held_c2b if c2b else self._held_b2c
        return held is not None and held.stopped

    def injection_pending(self, c2b: bool) -> bool:
        held = self._held_c2b if c2b else self._held_b2c
        return held is not None and bool(held.inject)

    def inject_at_boundary(self, c2b: bool, frame: bytes) -> bytes:
        """Queue `frame` for the next boundary; return it now if the stream is at one."""
        if self.at_boundary(c2b) and not self.injection_pending(c2b):
            return frame
        held = self._hold(c2b)
        if held.inject is _NO_FRAMES:
            held.inject = []
        held.inject.append(frame)
        return _EMPTY

    def close_at_boundary(self, c2b: bool, frame: bytes) -> bytes:
        """Like inject_at_boundary for the proxy's Close: nothing is forwarded after it."""
        out = self.inject_at_boundary(c2b, frame)
        held = self._hold(c2b)
        if out:
            held.stopped = True
        else:
            held.stop_after_inject = True
        return out

    def stop(self, c2b: bool) -> None:
        """Forward nothing more: after the proxy sent its own Close in this direction."""
        self._hold(c2b).stopped = True

    # ------------------------------------------------------------------ bytes

    def feed(self, c2b: bool, data: bytes) -> bytes:
        """Follow `data` in direction `c2b`; return the bytes to forward."""
        held = self._held_c2b if c2b else self._held_b2c
        if held is not None:
            if held.lost:
                return _EMPTY
            if held.stopped or held.error is not None:
                # Keep parsing so control frames (the peer's Close) are still seen.
                self._parse(c2b, data, False)
                return _EMPTY
            if held.head or held.ctrl is not None or held.inject:
                return self._parse(c2b, data, True)
        size = len(data)
        skip = self.skip_c2b if c2b else self.skip_b2c
        if skip >= size:
            # Fast path: the whole chunk is payload of the current data frame.
            if c2b:
                self.skip_c2b = skip - size
            else:
                self.skip_b2c = skip - size
            return data
        if skip:
            return self._parse(c2b, data, True)
        # Fastest path: the chunk is one whole small final text or binary frame with no
        # reserved bits (one small message per read, the usual chat or RPC traffic).
        if size > 1:
            b1 = data[1]
            length = b1 & 0x7F
            b0 = data[0]
            if (
                (b0 == 0x81 or b0 == 0x82)
                and length < 126
                and size == length + (6 if b1 & 0x80 else 2)
                and (b1 & 0x80 or not c2b)
                and length <= self.settings.max_message
            ):
                if c2b:
                    self.frames_c2b += 1
                    self.messages_c2b += 1
                    self.message_bytes_c2b = 0
                else:
                    self.frames_b2c += 1
                    self.messages_b2c += 1
                    self.message_bytes_b2c = 0
                return data
            # One whole ping, pong or close frame (the close handshake, keepalive).
            if (
                0x88 <= b0 <= 0x8A
                and length < 126
                and size == length + (6 if b1 & 0x80 else 2)
                and (b1 & 0x80 or not c2b)
            ):
                if c2b:
                    self.frames_c2b += 1
                else:
                    self.frames_b2c += 1
                return data if self._control_complete(c2b, data) else _EMPTY
        # Fast path: whole data frames from a boundary, the common case of small messages.
        if c2b:
            pos, skip, message_bytes, frames, messages = _scan_data_frames(
                data, self.message_bytes_c2b, self.settings.max_message, self.extensions, 0x80
            )
            self.skip_c2b = skip
            self.message_bytes_c2b = message_bytes
            self.frames_c2b += frames
            self.messages_c2b += messages
        else:
            pos, skip, message_bytes, frames, messages = _scan_data_frames(
                data, self.message_bytes_b2c, self.settings.max_message, self.extensions, 0
            )
            self.skip_b2c = skip
            self.message_bytes_b2c = message_bytes
            self.frames_b2c += frames
            self.messages_b2c += messages
        if pos == size:
            return data
        if not pos:
            # data[0:] would be a whole copy of the chunk once compiled by mypyc.
            return self._parse(c2b, data, True)
        rest = data[pos:]
        out = self._parse(c2b, rest, True)
        if out is rest:
            return data
        return data[:pos] + out

    def _parse(self, c2b: bool, data: bytes, forward: bool) -> bytes:
        """The full parser: any state, any chunk. The direction's four counters are kept in
        locals and stored back before a control frame is handed on and at the end."""
        if c2b:
            skip, message_bytes = self.skip_c2b, self.message_bytes_c2b
            frames, messages = self.frames_c2b, self.messages_c2b
        else:
            skip, message_bytes = self.skip_b2c, self.message_bytes_b2c
            frames, messages = self.frames_b2c, self.messages_b2c
        held = self._held_c2b if c2b else self._held_b2c
        limit = self.settings.max_message
        forbidden = 0 if self.extensions else _RSV
        pieces: list[bytes] = []
        start = 0  # start of the pending run of bytes to forward unchanged
        pos = 0
        size = len(data)
        while pos < size:
            if skip:
                step = min(skip, size - pos)
                skip -= step
                pos += step
                if skip == 0 and held is not None and held.inject and forward:
                    pieces.append(data[start:pos])
                    forward = self._flush_inject(held, pieces)
                    start = pos if forward else size
                continue
            if held is not None and held.ctrl is not None:
                step = min(held.ctrl_need, size - pos)
                held.ctrl += data[pos : pos + step]
                held.ctrl_need -= step
                pos += step
                start = pos
                if held.ctrl_need == 0:
                    self._store(c2b, skip, message_bytes, frames, messages)
                    forward = self._end_control(c2b, held, pieces, forward)
                    start = pos if forward else size
                continue
            # At a frame header (possibly split across chunks).
            frame_start = pos
            if held is not None and held.head:
                head = held.head
                assert isinstance(head, bytearray)  # non-empty only as a bytearray
                need = _header_length(head)
                while need == 0 or len(head) < need:
                    if pos >= size:
                        break
                    head.append(data[pos])
                    pos += 1
                    need = _header_length(head)
                if need == 0 or len(head) < need:
                    # Header still incomplete: its bytes are held, not forwarded.
                    if forward:
                        pieces.append(data[start:frame_start])
                    start = size
                    break
                header = bytes(head)
                held.head = _EMPTY
                # The carried-over header bytes were held back; forward them now.
                if forward:
                    pieces.append(data[start:frame_start])
                    # Never slice backwards below (data[pos:frame_start]): compiled by mypyc
                    # that raises SystemError instead of giving b"".
                    start = frame_start = pos
                    carried = header
                else:
                    carried = _EMPTY
            else:
                need = _header_length(data[pos : pos + 14])
                if need == 0 or pos + need > size:
                    # Incomplete header at the end of the chunk: hold it back.
                    if forward:
                        pieces.append(data[start:pos])
                    if held is None:
                        held = self._hold(c2b)
                    held.head = bytearray(data[pos:])
                    start = pos = size
                    break
                header = data[pos : pos + need]
                pos += need
                carried = _EMPTY
            frames += 1
            try:
                opcode, length, fin = _frame_header(header, forbidden, c2b)
                if opcode < 0x8:
                    message_bytes = length if opcode != OP_CONT else message_bytes + length
                    skip = length
                    if message_bytes > limit:
                        # skip is set, so the stream can still be followed to the peer's Close.
                        raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
                    if fin:
                        messages += 1
                        message_bytes = 0
            except FrameError as exc:
                if held is None:
                    held = self._hold(c2b)
                # Without its traceback: the frames it names would pin this object.
                held.error = exc.with_traceback(None)
                if forward:
                    # Forward up to the start of the offending frame; nothing after.
                    pieces.append(data[start:frame_start])
                    forward = False
                start = size
                if exc.code == CLOSE_PROTOCOL_ERROR:
                    held.lost = True  # framing can no longer be followed
                    break
                continue
            if opcode >= 0x8:
                # Control frame: hold its header with the payload until complete.
                if forward:
                    pieces.append(data[start:frame_start])
                if held is None:
                    held = self._hold(c2b)
                held.ctrl = bytearray(header)
                held.ctrl_need = length
                start = pos
                if length == 0:  # empty payload: complete now, even at chunk end
                    self._store(c2b, skip, message_bytes, frames, messages)
                    forward = self._end_control(c2b, held, pieces, forward)
                    start = pos if forward else size
                continue
            if carried and forward:
                pieces.append(carried)
            if skip == 0 and held is not None and held.inject and forward:
                pieces.append(data[start:pos])
                forward = self._flush_inject(held, pieces)
                start = pos if forward else size
        self._store(c2b, skip, message_bytes, frames, messages)
        if held is not None:
            self._release(c2b, held)
        if not forward:
            return _EMPTY if not pieces else b"".join(pieces)
        if start == 0 and not pieces:
            return data
        pieces.append(data[start:])
        return b"".join(pieces)

    def _end_control(self, c2b: bool, held: _Held, pieces: list[bytes], forward: bool) -> bool:
        """The held control frame is complete: inspect it, forward it unless dropped, and
        emit frames queued for this boundary. Returns whether forwarding goes on."""
        ctrl = held.ctrl
        assert ctrl is not None
        frame = bytes(ctrl)
        held.ctrl = None
        keep = self._control_complete(c2b, frame)
        if forward and keep:
            pieces.append(frame)
        if forward and held.inject:
            return self._flush_inject(held, pieces)
        return forward

    def _flush_inject(self, held: _Held, pieces: list[bytes]) -> bool:
        """Emit queued frames at this boundary; return whether forwarding goes on."""
        pieces.extend(held.inject)
        held.inject = _NO_FRAMES
        if held.stop_after_inject:
            held.stop_after_inject = False
            held.stopped = True
            return False
        return True

    def _control_complete(self, c2b: bool, frame: bytes) -> bool:
        """Inspect a whole control frame; return False to drop it from the stream."""
        opcode = frame[0] & 0x0F
        offset = _header_length(frame)
        payload = frame[offset:]
        if frame[1] & 0x80:
            payload = unmask(payload, frame[offset - 4 : offset])
        self.control(c2b, ControlFrame(opcode, payload))
        return opcode != OP_PONG or not self.is_own_pong(payload)


def _frame_header(header: bytes, forbidden: int, require_mask: bool) -> tuple[int, int, bool]:
    """(opcode, payload length, fin) of a whole frame header, or the FrameError for a rule
    it breaks (RSV bits, a client's unmasked frame, a reserved opcode, a bad control frame)."""
    b0, b1 = header[0], header[1]
    opcode = b0 & 0x0F
    length = b1 & 0x7F
    if length == 126:
        length = struct.unpack_from("!H", header, 2)[0]
    elif length == 127:
        length = struct.unpack_from("!Q", header, 2)[0]
    if b0 & forbidden:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
    if require_mask and not b1 & 0x80:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "unmasked client frame")
    if opcode >= 0x8:
        if opcode > OP_PONG:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
        if length > 125 or not b0 & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "bad control frame")
    elif opcode not in (OP_TEXT, OP_BINARY, OP_CONT):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
    return opcode, length, bool(b0 & 0x80)


def _scan_data_frames(
    data: bytes, message_bytes: int, limit: int, extensions: bool, masked: int
) -> tuple[int, int, int, int, int]:
    """Follow data frames from offset 0; stop before anything the full parser must see
    (control frames, limits, split headers, rule breaks). Returns the stop offset, the
    payload bytes still to skip, the message's size so far, frames and messages seen."""
    pos = skip = frames = messages = 0
    size = len(data)
    forbidden = 0 if extensions else _RSV
    while pos + 2 <= size:
        b0 = data[pos]
        b1 = data[pos + 1]
        if b0 & forbidden or (b1 & masked) != masked:
            break  # the full parser reports the protocol error
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        header = 2
        if length == 126:
            if pos + 4 > size:
                break
            length = (data[pos + 2] << 8) | data[pos + 3]
            header = 4
        elif length == 127:
            # A 64-bit length (a 64 KiB message): lengths of 4 GiB and more are left to the
            # full parser, so the arithmetic stays in machine words.
            if pos + 10 > size or data[pos + 2] or data[pos + 3] or data[pos + 4] or data[pos + 5]:
                break
            length = (
                (data[pos + 6] << 24) | (data[pos + 7] << 16) | (data[pos + 8] << 8) | data[pos + 9]
            )
            header = 10
        if b1 & 0x80:
            header += 4
        if pos + header > size:
            break
        if opcode == OP_CONT:
            total = message_bytes + length
        elif opcode in (OP_TEXT, OP_BINARY):
            total = length
        else:
            break
        if total > limit:
            break
        frames += 1
        if b0 & 0x80:
            messages += 1
            message_bytes = 0
        else:
            message_bytes = total
        end = pos + header + length
        if end > size:
            skip = end - size
            pos = size
            break
        pos = end
    return pos, skip, message_bytes, frames, messages


def _header_length(head: bytes | bytearray) -> int:
    """Total header length once known from the first bytes, else 0."""
    if len(head) < 2:
        return 0
    b1 = head[1]
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if b1 & 0x80 else 0)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask; only ever used on small control payloads. Up to 8 bytes
    (a Close with its code, most pings) byte by byte, longer as one big-int XOR (compiled,
    per call: 2 bytes ~1.0k instructions against 3.7k as a big int; 8 bytes 2.4k
    against 4.5k; from 30 bytes on the big int is as cheap and then cheaper)."""
    size = len(payload)
    if size <= 8:
        return bytes([payload[i] ^ mask[i & 3] for i in range(size)])
    key = (bytes(mask) * (size // 4 + 1))[:size]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")


def build_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One final frame; masked (random key) toward a backend, unmasked toward a client."""
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, (0x80 if mask else 0) | length)
    elif length < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, (0x80 if mask else 0) | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, (0x80 if mask else 0) | 127, length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def close_frame(code: int, reason: str, *, mask: bool) -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:123]
    return build_frame(OP_CLOSE, payload, mask=mask)


def ping_frame(payload: bytes, *, mask: bool) -> bytes:
    return build_frame(OP_PING, payload, mask=mask)
