"""Frames follows real frames (serialized by websockets) split at any offset, in either
direction of a connection (the client's direction requires masked frames)."""

from __future__ import annotations

import os
import random

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader
from websockets.utils import apply_mask

from dataplane.frames import (
    B2C,
    C2B,
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    OP_PONG,
    ControlFrame,
    Frames,
    RelaySettings,
    close_frame,
    ping_frame,
    unmask,
)


class Recorder:
    """A ControlSink that records every control frame and its direction; pongs starting
    with `own` are the proxy's own (dropped from the stream)."""

    def __init__(self, own: bytes = b"") -> None:
        self.own = own
        self.seen: list[ControlFrame] = []
        self.directions: list[bool] = []

    def control(self, c2b: bool, frame: ControlFrame) -> None:
        self.directions.append(c2b)
        self.seen.append(frame)

    def is_own_pong(self, payload: bytes) -> bool:
        return bool(self.own) and payload.startswith(self.own)


def tracker_for(max_message: int, sink: Recorder | None = None) -> Frames:
    """Both directions' frame state under a listener's message limit, with RSV bits
    allowed (as when the backend negotiated an extension)."""
    return Frames(RelaySettings(max_message=max_message, idle_timeout=60.0), sink=sink)


def serialize(frame: Frame, mask: bool) -> bytes:
    return frame.serialize(mask=mask)


def parse_all(data: bytes, mask: bool) -> list[Frame]:
    """Parse a byte stream back into frames with websockets' own parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while True:
        parser = Frame.parse(reader.read_exact, mask=mask)
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
            continue
        except EOFError:
            break
        break
    return frames


def feed_in_chunks(frames: Frames, c2b: bool, data: bytes, sizes: list[int]) -> bytes:
    out = []
    pos = 0
    for size in sizes:
        out.append(frames.feed(c2b, data[pos : pos + size]))
        pos += size
    out.append(frames.feed(c2b, data[pos:]))
    return b"".join(out)


def sample_stream(mask: bool) -> tuple[bytes, list[Frame]]:
    frames = [
        Frame(Opcode.TEXT, b"hello"),
        Frame(Opcode.BINARY, os.urandom(300)),
        Frame(Opcode.TEXT, b"frag", fin=False),
        Frame(Opcode.PING, b"p1"),
        Frame(Opcode.CONT, b"ment", fin=False),
        Frame(Opcode.CONT, b"ed", fin=True),
        Frame(Opcode.BINARY, os.urandom(70_000)),
        Frame(Opcode.PONG, b""),
        Frame(Opcode.TEXT, b""),
    ]
    return b"".join(serialize(f, mask) for f in frames), frames


@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("seed", range(20))
def test_tracker_passes_bytes_unchanged_and_counts_messages(mask: bool, seed: int) -> None:
    data, frames = sample_stream(mask)
    rng = random.Random(seed)
    sizes = [rng.choice([1, 2, 3, 7, 100, 5000]) for _ in range(60)]
    sink = Recorder()
    tracker = tracker_for(1 << 20, sink)
    direction = C2B if mask else B2C  # a client's frames are masked, a backend's not
    out = feed_in_chunks(tracker, direction, data, sizes)
    assert out == data
    if direction:
        assert (tracker.messages_c2b, tracker.messages_b2c) == (5, 0)
        assert (tracker.frames_c2b, tracker.frames_b2c) == (len(frames), 0)
    else:
        assert (tracker.messages_b2c, tracker.messages_c2b) == (5, 0)
        assert (tracker.frames_b2c, tracker.frames_c2b) == (len(frames), 0)
    assert tracker.at_boundary(direction)
    assert [(c.opcode, c.payload) for c in sink.seen] == [(0x9, b"p1"), (0xA, b"")]
    assert all(seen_on is direction for seen_on in sink.directions)


@pytest.mark.parametrize("seed", range(20))
def test_injected_frames_land_on_boundaries(seed: int) -> None:
    data, frames = sample_stream(mask=True)
    rng = random.Random(seed)
    tracker = tracker_for(1 << 20)
    out = []
    pos = 0
    injected = 0
    while pos < len(data):
        size = rng.choice([1, 5, 50, 9000])
        if rng.random() < 0.3:
            out.append(tracker.inject_at_boundary(C2B, ping_frame(b"wslb", mask=True)))
            injected += 1
        out.append(tracker.feed(C2B, data[pos : pos + size]))
        pos += size
    out.append(tracker.inject_at_boundary(C2B, b""))
    parsed = parse_all(b"".join(out), mask=True)
    originals = [f for f in parsed if f.data != b"wslb"]
    assert [(f.opcode, f.data, f.fin) for f in originals] == [
        (f.opcode, f.data, f.fin) for f in frames
    ]
    assert sum(1 for f in parsed if f.data == b"wslb") == injected


def test_own_pongs_are_dropped_and_others_kept() -> None:
    stream = (
        serialize(Frame(Opcode.PONG, b"wslb-1"), True)
        + serialize(Frame(Opcode.TEXT, b"x"), True)
        + serialize(Frame(Opcode.PONG, b"theirs"), True)
    )
    sink = Recorder(own=b"wslb-")
    tracker = tracker_for(100, sink)
    out = feed_in_chunks(tracker, C2B, stream, [3, 4, 1])
    assert [(f.opcode, f.data) for f in parse_all(out, mask=True)] == [
        (Opcode.TEXT, b"x"),
        (Opcode.PONG, b"theirs"),
    ]
    assert [c.payload for c in sink.seen if c.opcode == OP_PONG] == [b"wslb-1", b"theirs"]


def test_oversized_message_stops_at_its_first_frame() -> None:
    first = serialize(Frame(Opcode.TEXT, b"a" * 50), True)
    big = serialize(Frame(Opcode.BINARY, b"b" * 200, fin=False), True)
    tracker = tracker_for(100)
    out = tracker.feed(C2B, first + big[:10])
    assert out == first
    error = tracker.error(C2B)
    assert error is not None
    assert error.code == CLOSE_MESSAGE_TOO_BIG
    assert tracker.error(B2C) is None


def test_fragmented_message_size_is_summed_across_frames() -> None:
    frames = [Frame(Opcode.TEXT, b"a" * 60, fin=False), Frame(Opcode.CONT, b"a" * 60)]
    tracker = tracker_for(100)
    tracker.feed(B2C, b"".join(serialize(f, False) for f in frames))
    error = tracker.error(B2C)
    assert error is not None
    assert error.code == CLOSE_MESSAGE_TOO_BIG


def test_close_after_stop_is_still_seen() -> None:
    sink = Recorder()
    tracker = tracker_for(100, sink)
    tracker.stop(C2B)
    data = serialize(Frame(Opcode.TEXT, b"late"), True) + serialize(
        Frame(Opcode.CLOSE, Close(1000, "bye").serialize()), True
    )
    assert tracker.feed(C2B, data) == b""
    assert [(c.close_code, c.close_reason) for c in sink.seen] == [(1000, "bye")]


@pytest.mark.parametrize("mask", [True, False])
def test_proxy_close_frames_parse_as_valid_close(mask: bool) -> None:
    (frame,) = parse_all(close_frame(CLOSE_GOING_AWAY, "idle timeout", mask=mask), mask=mask)
    close = Close.parse(frame.data)
    assert (close.code, close.reason) == (1001, "idle timeout")


def test_proxy_close_waits_for_the_frame_in_flight_and_ends_forwarding() -> None:
    first = serialize(Frame(Opcode.BINARY, b"x" * 1000), False)
    after = serialize(Frame(Opcode.TEXT, b"never forwarded"), False)
    tracker = tracker_for(1 << 20)
    out = [tracker.feed(B2C, first[:500])]
    out.append(tracker.close_at_boundary(B2C, close_frame(CLOSE_GOING_AWAY, "drain", mask=False)))
    out.append(tracker.feed(B2C, first[500:] + after))
    out.append(tracker.feed(B2C, after))
    frames = parse_all(b"".join(out), mask=False)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.CLOSE]
    assert tracker.stopped(B2C)
    assert not tracker.stopped(C2B)


def test_a_64_bit_length_past_4_gib_is_followed_exactly() -> None:
    """The fast scan reads 64-bit lengths below 4 GiB itself; longer ones go to the full
    parser, which must follow every bit of the length."""
    length = (1 << 32) + 5
    head = bytes([0x82, 127]) + length.to_bytes(8, "big")
    tracker = tracker_for(1 << 40)
    assert tracker.feed(B2C, head + b"x" * 10) == head + b"x" * 10
    assert tracker.skip_b2c == length - 10
    assert not tracker.at_boundary(B2C)


def test_rare_state_is_made_on_demand_and_dropped_once_quiet() -> None:
    """A split header, a control frame in pieces and a queued frame each need held state;
    once they are through, the direction holds nothing again (idle memory)."""
    tracker = tracker_for(1 << 20)
    text = serialize(Frame(Opcode.TEXT, b"x" * 300), False)
    ping = serialize(Frame(Opcode.PING, b"abc"), False)
    assert tracker.feed(B2C, text[:1]) == b""
    assert tracker._held(B2C) is not None
    out = tracker.feed(B2C, text[1:100])
    assert tracker._held(B2C) is None
    assert tracker.inject_at_boundary(B2C, b"injected") == b""
    assert tracker._held(B2C) is not None
    out += tracker.feed(B2C, text[100:] + ping[:3])
    assert tracker._held(B2C) is not None  # the ping is held until whole
    out += tracker.feed(B2C, ping[3:])
    assert out == text + b"injected" + ping  # the held header byte went out with the rest
    assert tracker._held(B2C) is None
    assert tracker._held(C2B) is None
    assert (tracker.messages_b2c, tracker.frames_b2c) == (1, 2)


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 5, 8, 9, 30, 125])
def test_unmask_matches_websockets_on_both_sides_of_the_small_path(size: int) -> None:
    payload = os.urandom(size)
    mask = os.urandom(4)
    assert unmask(payload, mask) == apply_mask(payload, mask)
