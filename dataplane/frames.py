"""Frame tracking for one direction of a WebSocket tunnel, and frames the proxy writes itself.

The tracker reads frame headers only: data payloads are counted and skipped, never
unmasked or copied. That is enough to count messages, enforce a maximum message size,
find frame boundaries where the proxy may inject its own ping or close frames, and
swallow the pongs that answer the proxy's own pings. Control frames (at most 125 bytes
of payload) are held until complete so they can be inspected; that is the only data
the tracker buffers.

Sans-I/O: no sockets, no event loop. The tunnel feeds bytes in and writes what comes
out. A tracker tells one `ControlSink` (the relay) about the control frames it sees, by
calling its methods: no bound-method objects per tracker (72 bytes each, per connection).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Final, Protocol

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

_EMPTY: Final = b""
_NO_FRAMES: Final[list[bytes]] = []  # shared and never appended to: see inject_at_boundary


@dataclass(frozen=True)
class ControlFrame:
    """A complete control frame seen on the stream, payload already unmasked."""

    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        if self.opcode != OP_CLOSE or len(self.payload) < 2:
            return CLOSE_NO_STATUS
        return int(struct.unpack("!H", self.payload[:2])[0])

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
    """Who hears about a tracker's control frames (relay.Relay; the tests' recorder)."""

    def control(self, tracker: FrameTracker, frame: ControlFrame) -> None:
        """A whole control frame went by on `tracker` (which direction: compare it)."""

    def is_own_pong(self, payload: bytes) -> bool:
        """Whether a pong answers the proxy's own ping: it is then dropped from the stream."""


class FrameTracker:
    """Follows frame boundaries in one direction.

    `feed(data)` returns the bytes to forward. Normally that is `data` itself; it
    differs only when a control frame is held back or dropped, or when bytes were
    injected at a boundary via `inject_at_boundary`.
    """

    __slots__ = (
        "_ctrl",
        "_ctrl_need",
        "_head",
        "_inject",
        "_lost",
        "_message_bytes",
        "_skip",
        "_stop_after_inject",
        "error",
        "frames",
        "max_message",
        "messages",
        "require_mask",
        "rsv_forbidden",
        "sink",
        "stopped",
    )

    def __init__(
        self,
        max_message: int,
        sink: ControlSink | None = None,
        *,
        require_mask: bool = False,
        extensions: bool = True,
    ) -> None:
        self.max_message = max_message
        # RFC 6455 §5.1: a client masks every frame; §5.2: RSV bits only with an extension
        # negotiated in the 101 (any extension: the proxy cannot know which bits it uses).
        self.require_mask = require_mask
        self.rsv_forbidden = 0 if extensions else 0x70
        self.sink = sink
        self.messages = 0
        self.frames = 0
        self.error: FrameError | None = None
        self.stopped = False
        self._skip = 0  # payload bytes of the current data frame still to pass through
        # A partial frame header carried over between chunks, and frames queued for the
        # next boundary. Both are rare: start with shared empties, not a buffer per tracker.
        self._head: bytes | bytearray = _EMPTY
        self._ctrl: bytearray | None = None  # control frame being collected
        self._ctrl_need = 0
        self._message_bytes = 0
        self._inject: list[bytes] = _NO_FRAMES
        self._lost = False
        self._stop_after_inject = False

    @property
    def at_boundary(self) -> bool:
        """Whether what was forwarded so far ends on a frame boundary. After an error
        nothing past the start of the offending frame was forwarded, so it does."""
        if self.error is not None:
            return True
        return self._skip == 0 and not self._head and self._ctrl is None

    @property
    def lost(self) -> bool:
        """Framing can no longer be followed (after a protocol error): nothing more is seen."""
        return self._lost

    @property
    def injection_pending(self) -> bool:
        return bool(self._inject)

    def inject_at_boundary(self, frame: bytes) -> bytes:
        """Queue `frame` for the next boundary; return it now if the stream is at one."""
        if self.at_boundary and not self._inject:
            return frame
        if self._inject is _NO_FRAMES:
            self._inject = []
        self._inject.append(frame)
        return _EMPTY

    def close_at_boundary(self, frame: bytes) -> bytes:
        """Like inject_at_boundary for the proxy's Close: nothing is forwarded after it."""
        out = self.inject_at_boundary(frame)
        if out:
            self.stopped = True
        else:
            self._stop_after_inject = True
        return out

    def stop(self) -> None:
        """Forward nothing more: after the proxy sent its own Close in this direction."""
        self.stopped = True

    def feed(self, data: bytes) -> bytes:
        if self._lost:
            return _EMPTY
        if self.stopped or self.error is not None:
            # Keep parsing so control frames (the peer's Close) are still seen.
            self._parse(data, forward=False)
            return _EMPTY
        if self._skip >= len(data) and not self._inject:
            # Fast path: the whole chunk is payload of the current data frame.
            self._skip -= len(data)
            return data
        if self._skip or self._head or self._ctrl is not None or self._inject:
            return self._parse(data, forward=True)
        # Fastest path: the chunk is one whole small final text or binary frame with no
        # reserved bits (one small message per read, the usual chat or RPC traffic).
        size = len(data)
        if size > 1:
            b1 = data[1]
            length = b1 & 0x7F
            b0 = data[0]
            if (
                (b0 == 0x81 or b0 == 0x82)
                and length < 126
                and size == length + (6 if b1 & 0x80 else 2)
                and (b1 & 0x80 or not self.require_mask)
                and length <= self.max_message
            ):
                self.frames += 1
                self.messages += 1
                self._message_bytes = 0
                return data
            # One whole ping, pong or close frame (the close handshake, keepalive).
            if (
                0x88 <= b0 <= 0x8A
                and length < 126
                and size == length + (6 if b1 & 0x80 else 2)
                and (b1 & 0x80 or not self.require_mask)
            ):
                self.frames += 1
                return data if self._control_complete(data) else _EMPTY
        # Fast path: whole data frames from a boundary, the common case of small messages.
        pos = self._scan_data_frames(data)
        if pos == len(data):
            return data
        if not pos:
            # A 64 KiB message starts with a 64-bit length, which the scan leaves to the full
            # parser: data[0:] would be a whole copy of the chunk once compiled by mypyc.
            return self._parse(data, forward=True)
        rest = data[pos:]
        out = self._parse(rest, forward=True)
        if out is rest:
            return data
        return data[:pos] + out

    def _scan_data_frames(self, data: bytes) -> int:
        """Follow data frames from offset 0; stop before anything the full parser must see
        (control frames, 64-bit lengths, limits, split headers). Returns the stop offset."""
        pos = 0
        size = len(data)
        message_bytes = self._message_bytes
        limit = self.max_message
        forbidden = self.rsv_forbidden
        masked = 0x80 if self.require_mask else 0
        frames = messages = 0
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
                break
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
                self._skip = end - size
                pos = size
                break
            pos = end
        self._message_bytes = message_bytes
        self.frames += frames
        self.messages += messages
        return pos

    def _parse(self, data: bytes, forward: bool) -> bytes:
        pieces: list[bytes] = []
        start = 0  # start of the pending run of bytes to forward unchanged
        pos = 0
        size = len(data)
        while pos < size:
            if self._skip:
                step = min(self._skip, size - pos)
                self._skip -= step
                pos += step
                if self._skip == 0 and self._inject and forward:
                    pieces.append(data[start:pos])
                    forward = self._flush_inject(pieces)
                    start = pos if forward else size
                continue
            if self._ctrl is not None:
                step = min(self._ctrl_need, size - pos)
                self._ctrl += data[pos : pos + step]
                self._ctrl_need -= step
                pos += step
                start = pos
                if self._ctrl_need == 0:
                    forward = self._end_control(pieces, forward)
                    start = pos if forward else size
                continue
            # At a frame header (possibly split across chunks).
            frame_start = pos
            if self._head:
                assert isinstance(self._head, bytearray)  # non-empty only as a bytearray
                need = _header_length(self._head)
                while need == 0 or len(self._head) < need:
                    if pos >= size:
                        break
                    self._head.append(data[pos])
                    pos += 1
                    need = _header_length(self._head)
                if need == 0 or len(self._head) < need:
                    # Header still incomplete: its bytes are held in _head, not forwarded.
                    if forward:
                        pieces.append(data[start:frame_start])
                    start = size
                    break
                header = bytes(self._head)
                self._head = _EMPTY
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
                    self._head = bytearray(data[pos:])
                    start = pos = size
                    break
                header = data[pos : pos + need]
                pos += need
                carried = _EMPTY
            try:
                control = self._header_complete(header)
            except FrameError as exc:
                self.error = exc
                if forward:
                    # Forward up to the start of the offending frame; nothing after.
                    pieces.append(data[start:frame_start])
                    forward = False
                start = size
                if exc.code == CLOSE_PROTOCOL_ERROR:
                    self._lost = True  # framing can no longer be followed
                    break
                continue
            if control:
                # Control frame: hold its header with the payload until complete.
                if forward:
                    pieces.append(data[start:frame_start])
                self._ctrl = bytearray(header)
                start = pos
                if self._ctrl_need == 0:  # empty payload: complete now, even at chunk end
                    forward = self._end_control(pieces, forward)
                    start = pos if forward else size
                continue
            if carried and forward:
                pieces.append(carried)
            if self._skip == 0 and self._inject and forward:
                pieces.append(data[start:pos])
                forward = self._flush_inject(pieces)
                start = pos if forward else size
        if not forward:
            return _EMPTY if not pieces else b"".join(pieces)
        if start == 0 and not pieces:
            return data
        pieces.append(data[start:])
        return b"".join(pieces)

    def _end_control(self, pieces: list[bytes], forward: bool) -> bool:
        """The held control frame is complete: inspect it, forward it unless dropped, and
        emit frames queued for this boundary. Returns whether forwarding goes on."""
        assert self._ctrl is not None
        frame = bytes(self._ctrl)
        self._ctrl = None
        keep = self._control_complete(frame)
        if forward and keep:
            pieces.append(frame)
        if forward and self._inject:
            return self._flush_inject(pieces)
        return forward

    def _flush_inject(self, pieces: list[bytes]) -> bool:
        """Emit queued frames at this boundary; return whether forwarding goes on."""
        pieces.extend(self._inject)
        self._inject = _NO_FRAMES
        if self._stop_after_inject:
            self._stop_after_inject = False
            self.stopped = True
            return False
        return True

    def _header_complete(self, header: bytes) -> bool:
        """Check a whole frame header and follow it; True for a control frame, whose
        payload the caller then collects (a returned flag, not `_ctrl` read back: mypy
        narrows an attribute across a call, and compiled code trusts the narrowing)."""
        b0, b1 = header[0], header[1]
        opcode = b0 & 0x0F
        length = b1 & 0x7F
        if length == 126:
            length = struct.unpack_from("!H", header, 2)[0]
        elif length == 127:
            length = struct.unpack_from("!Q", header, 2)[0]
        self.frames += 1
        if b0 & self.rsv_forbidden:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set")
        if self.require_mask and not b1 & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "unmasked client frame")
        if opcode >= 0x8:
            if opcode > OP_PONG:
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
            if length > 125 or not b0 & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "bad control frame")
            self._ctrl_need = length
            return True
        if opcode in (OP_TEXT, OP_BINARY):
            self._message_bytes = length
        elif opcode == OP_CONT:
            self._message_bytes += length
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"reserved opcode {opcode}")
        self._skip = length
        if self._message_bytes > self.max_message:
            # _skip is set, so the stream can still be followed to the peer's Close.
            raise FrameError(CLOSE_MESSAGE_TOO_BIG, "message too big")
        if b0 & 0x80:
            self.messages += 1
            self._message_bytes = 0
        return False

    def _control_complete(self, frame: bytes) -> bool:
        """Inspect a whole control frame; return False to drop it from the stream."""
        opcode = frame[0] & 0x0F
        offset = _header_length(frame)
        payload = frame[offset:]
        if frame[1] & 0x80:
            payload = unmask(payload, frame[offset - 4 : offset])
        sink = self.sink
        if sink is None:
            return True
        sink.control(self, ControlFrame(opcode, payload))
        return opcode != OP_PONG or not sink.is_own_pong(payload)


def _header_length(head: bytes | bytearray) -> int:
    """Total header length once known from the first bytes, else 0."""
    if len(head) < 2:
        return 0
    b1 = head[1]
    length = b1 & 0x7F
    size = 2 + (2 if length == 126 else 8 if length == 127 else 0)
    return size + (4 if b1 & 0x80 else 0)


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask; only ever used on small control payloads (one big-int
    XOR: a per-byte generator cost more than the rest of a Close frame's handling)."""
    size = len(payload)
    if not size:
        return b""
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
