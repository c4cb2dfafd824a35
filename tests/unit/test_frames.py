"""The frame tracker follows real frames (serialized by websockets) split at any offset."""

from __future__ import annotations

import os
import random

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from dataplane.frames import (
    CLOSE_GOING_AWAY,
    CLOSE_MESSAGE_TOO_BIG,
    OP_PONG,
    ControlFrame,
    FrameTracker,
    close_frame,
    ping_frame,
)


class Recorder:
    """A ControlSink that records every control frame; pongs starting with `own` are the
    proxy's own (dropped from the stream)."""

    def __init__(self, own: bytes = b"") -> None:
        self.own = own
        self.seen: list[ControlFrame] = []
        self.trackers: list[FrameTracker] = []

    def control(self, tracker: FrameTracker, frame: ControlFrame) -> None:
        self.trackers.append(tracker)
        self.seen.append(frame)

    def is_own_pong(self, payload: bytes) -> bool:
        return bool(self.own) and payload.startswith(self.own)


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


def feed_in_chunks(tracker: FrameTracker, data: bytes, sizes: list[int]) -> bytes:
    out = []
    pos = 0
    for size in sizes:
        out.append(tracker.feed(data[pos : pos + size]))
        pos += size
    out.append(tracker.feed(data[pos:]))
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
    tracker = FrameTracker(max_message=1 << 20, sink=sink)
    out = feed_in_chunks(tracker, data, sizes)
    assert out == data
    assert tracker.messages == 5
    assert tracker.frames == len(frames)
    assert tracker.at_boundary
    assert [(c.opcode, c.payload) for c in sink.seen] == [(0x9, b"p1"), (0xA, b"")]
    assert all(seen_on is tracker for seen_on in sink.trackers)


@pytest.mark.parametrize("seed", range(20))
def test_injected_frames_land_on_boundaries(seed: int) -> None:
    data, frames = sample_stream(mask=True)
    rng = random.Random(seed)
    tracker = FrameTracker(max_message=1 << 20)
    out = []
    pos = 0
    injected = 0
    while pos < len(data):
        size = rng.choice([1, 5, 50, 9000])
        if rng.random() < 0.3:
            out.append(tracker.inject_at_boundary(ping_frame(b"wslb", mask=True)))
            injected += 1
        out.append(tracker.feed(data[pos : pos + size]))
        pos += size
    out.append(tracker.inject_at_boundary(b""))
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
    tracker = FrameTracker(max_message=100, sink=sink)
    out = feed_in_chunks(tracker, stream, [3, 4, 1])
    assert [(f.opcode, f.data) for f in parse_all(out, mask=True)] == [
        (Opcode.TEXT, b"x"),
        (Opcode.PONG, b"theirs"),
    ]
    assert [c.payload for c in sink.seen if c.opcode == OP_PONG] == [b"wslb-1", b"theirs"]


def test_oversized_message_stops_at_its_first_frame() -> None:
    first = serialize(Frame(Opcode.TEXT, b"a" * 50), True)
    big = serialize(Frame(Opcode.BINARY, b"b" * 200, fin=False), True)
    tracker = FrameTracker(max_message=100)
    out = tracker.feed(first + big[:10])
    assert out == first
    assert tracker.error is not None
    assert tracker.error.code == CLOSE_MESSAGE_TOO_BIG


def test_fragmented_message_size_is_summed_across_frames() -> None:
    frames = [Frame(Opcode.TEXT, b"a" * 60, fin=False), Frame(Opcode.CONT, b"a" * 60)]
    tracker = FrameTracker(max_message=100)
    tracker.feed(b"".join(serialize(f, False) for f in frames))
    assert tracker.error is not None
    assert tracker.error.code == CLOSE_MESSAGE_TOO_BIG


def test_close_after_stop_is_still_seen() -> None:
    sink = Recorder()
    tracker = FrameTracker(max_message=100, sink=sink)
    tracker.stop()
    data = serialize(Frame(Opcode.TEXT, b"late"), True) + serialize(
        Frame(Opcode.CLOSE, Close(1000, "bye").serialize()), True
    )
    assert tracker.feed(data) == b""
    assert [(c.close_code, c.close_reason) for c in sink.seen] == [(1000, "bye")]


@pytest.mark.parametrize("mask", [True, False])
def test_proxy_close_frames_parse_as_valid_close(mask: bool) -> None:
    (frame,) = parse_all(close_frame(CLOSE_GOING_AWAY, "idle timeout", mask=mask), mask=mask)
    close = Close.parse(frame.data)
    assert (close.code, close.reason) == (1001, "idle timeout")


def test_proxy_close_waits_for_the_frame_in_flight_and_ends_forwarding() -> None:
    first = serialize(Frame(Opcode.BINARY, b"x" * 1000), False)
    after = serialize(Frame(Opcode.TEXT, b"never forwarded"), False)
    tracker = FrameTracker(max_message=1 << 20)
    out = [tracker.feed(first[:500])]
    out.append(tracker.close_at_boundary(close_frame(CLOSE_GOING_AWAY, "drain", mask=False)))
    out.append(tracker.feed(first[500:] + after))
    out.append(tracker.feed(after))
    frames = parse_all(b"".join(out), mask=False)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.CLOSE]
    assert tracker.stopped
