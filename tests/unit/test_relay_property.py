"""Property: any valid frame stream, cut into any chunks, with the proxy's own frames
injected at any moment, passes through the connection core byte-identical (apart from
the injected frames, each at a frame boundary) and is counted exactly. websockets' own
frame parser is the reference for what the bytes mean."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from dataplane.frames import B2C, C2B, ping_frame
from dataplane.relay import Relay, RelaySettings
from tests.unit.test_frames import parse_all

# Payload sizes that exercise the 7-bit, 16-bit and 64-bit length encodings.
sizes = st.one_of(
    st.integers(0, 125), st.integers(126, 2000), st.sampled_from([65535, 65536, 70000])
)
control = st.builds(
    lambda opcode, size: Frame(opcode, b"c" * size),
    st.sampled_from([Opcode.PING, Opcode.PONG]),
    st.integers(0, 125),
)


@st.composite
def message(draw: st.DrawFn) -> list[Frame]:
    """One data message in 1-3 fragments, control frames possibly between them."""
    opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
    parts = draw(st.lists(sizes, min_size=1, max_size=3))
    frames: list[Frame] = []
    for index, size in enumerate(parts):
        last = index == len(parts) - 1
        frames.append(Frame(opcode if index == 0 else Opcode.CONT, b"d" * size, fin=last))
        if not last:
            frames.extend(draw(st.lists(control, max_size=1)))
    return frames


stream = st.lists(st.one_of(message(), st.lists(control, min_size=1, max_size=1)), max_size=8)


def run(
    frames: list[Frame], cuts: list[int], injections: set[int], from_client: bool
) -> tuple[Relay, bytes, list[bytes], bytes]:
    data = b"".join(frame.serialize(mask=from_client) for frame in frames)
    relay = Relay(RelaySettings(max_message=1 << 20, idle_timeout=60.0), 0.0)
    direction = C2B if from_client else B2C
    feed = relay.client_data if from_client else relay.backend_data
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    out: list[bytes] = []
    injected: list[bytes] = []
    for index, (start, end) in enumerate(zip(points, [*points[1:], len(data)], strict=True)):
        if index in injections:
            frame = ping_frame(b"inj-%d" % index, mask=from_client)
            injected.append(frame)
            out.append(relay.inject_at_boundary(direction, frame))
        out.append(feed(data[start:end], float(index)))
    return relay, data, injected, b"".join(out)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    messages=stream,
    cuts=st.lists(st.integers(0, 1 << 20), max_size=20),
    injections=st.sets(st.integers(0, 20), max_size=5),
    from_client=st.booleans(),
)
def test_streams_pass_byte_identical_with_injections_at_boundaries(
    messages: list[list[Frame]], cuts: list[int], injections: set[int], from_client: bool
) -> None:
    frames = [frame for group in messages for frame in group]
    relay, data, injected, out = run(frames, cuts, injections, from_client)
    # The reference parser sees the original frames with the pings in between.
    parsed = parse_all(out, mask=from_client)
    ours = [f for f in parsed if f.opcode is Opcode.PING and f.data.startswith(b"inj-")]
    theirs = [f for f in parsed if not (f.opcode is Opcode.PING and f.data.startswith(b"inj-"))]
    assert len(ours) == len(injected)
    assert [(f.opcode, f.data, f.fin) for f in theirs] == [
        (f.opcode, f.data, f.fin) for f in frames
    ]
    # Byte-identical once the injected frames are taken out again.
    rest = out
    for frame in injected:
        assert frame in rest
        rest = rest.replace(frame, b"", 1)
    assert rest == data
    # Counted exactly.
    messages_seen = relay.messages_c2b if from_client else relay.messages_b2c
    bytes_seen = relay.bytes_c2b if from_client else relay.bytes_b2c
    assert messages_seen == sum(1 for f in frames if f.fin and f.opcode.value <= 2)
    assert bytes_seen == len(data)
    assert relay.closed_by == "" and relay.pending is False
