"""The connection core with a fake clock: every close path, keepalive, idle, drain, limits.

Frames are built and read back with websockets' own frame code, so the core is checked
against an implementation it does not share.
"""

from __future__ import annotations

import gc
import struct

import pytest
from websockets.frames import Close, Frame, Opcode

from dataplane.frames import B2C, C2B
from dataplane.relay import (
    CLOSE_BACKEND,
    CLOSE_CLIENT,
    COUNT_IDLE_TIMEOUT,
    COUNT_KEEPALIVE_TIMEOUT,
    RESUME_CLIENT,
    Relay,
    RelaySettings,
    negotiated_extensions,
)
from tests.unit.test_frames import parse_all

T0 = 1000.0
FINISH = CLOSE_CLIENT | CLOSE_BACKEND


def settings(**overrides: float) -> RelaySettings:
    values: dict[str, float] = {"max_message": 1 << 20, "idle_timeout": 60.0}
    values.update(overrides)
    return RelaySettings(**values)  # type: ignore[arg-type]


def client_frame(opcode: Opcode, payload: bytes = b"", fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=True)


def backend_frame(opcode: Opcode, payload: bytes = b"", fin: bool = True) -> bytes:
    return Frame(opcode, payload, fin=fin).serialize(mask=False)


def close_payload(code: int, reason: str = "") -> bytes:
    return Close(code, reason).serialize()


class Peers:
    """A relay and everything it wrote each way, with the actions it asked for."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.to_client = b""
        self.to_backend = b""
        self.actions = 0

    def collect(self) -> None:
        to_client, to_backend, actions = self.relay.take()
        self.to_client += b"".join(to_client)
        self.to_backend += b"".join(to_backend)
        self.actions |= actions

    def client(self, data: bytes, now: float = T0) -> None:
        self.to_backend += self.relay.client_data(data, now)
        self.collect()

    def backend(self, data: bytes, now: float = T0) -> None:
        self.to_client += self.relay.backend_data(data, now)
        self.collect()

    def tick(self, now: float) -> None:
        self.relay.tick(now)
        self.collect()

    def frames_to_client(self) -> list[Frame]:
        return parse_all(self.to_client, mask=False)

    def frames_to_backend(self) -> list[Frame]:
        return parse_all(self.to_backend, mask=True)

    @property
    def finished(self) -> bool:
        return self.actions & FINISH == FINISH


def closes(frames: list[Frame]) -> list[tuple[int, str]]:
    out = []
    for frame in frames:
        if frame.opcode is Opcode.CLOSE:
            close = Close.parse(frame.data)
            out.append((close.code, close.reason))
    return out


def peers(**overrides: float) -> Peers:
    return Peers(Relay(settings(**overrides), T0))


# ---------------------------------------------------------------------- relaying


def test_frames_pass_through_unchanged_and_are_counted() -> None:
    p = peers()
    up = client_frame(Opcode.TEXT, b"hello") + client_frame(Opcode.BINARY, b"x" * 300)
    down = backend_frame(Opcode.TEXT, b"frag", fin=False) + backend_frame(Opcode.CONT, b"ment")
    p.client(up)
    p.backend(down)
    assert p.to_backend == up
    assert p.to_client == down
    assert (p.relay.messages_c2b, p.relay.messages_b2c) == (2, 1)
    assert (p.relay.bytes_c2b, p.relay.bytes_b2c) == (len(up), len(down))
    assert p.actions == 0


def test_a_connection_that_only_relays_holds_no_rare_state() -> None:
    """Idle memory: relaying, split headers and a due-less tick leave no lifecycle or held
    frame state behind; keepalive needs its lifecycle from the start."""
    p = peers()
    up = client_frame(Opcode.TEXT, b"x" * 200)
    p.client(up[:1])
    p.client(up[1:])
    p.backend(backend_frame(Opcode.BINARY, b"y" * 70_000))
    p.tick(T0 + 1)
    assert p.to_backend == up
    assert p.relay.next_deadline() == T0 + 60.0
    assert p.relay._life is None
    assert p.relay._held(C2B) is None and p.relay._held(B2C) is None
    assert (p.relay.close_code, p.relay.closed_by) == (1005, "")
    assert peers(keepalive_interval=5.0, keepalive_timeout=2.0).relay._life is not None


def test_no_reference_cycle_runs_through_a_relay() -> None:
    """Compiled, the relay is outside the cyclic GC (acyclic: 16 bytes less per
    connection), so nothing it holds may lead back to it: here a relay that failed on a
    protocol error (the error is kept) and ran keepalive is freed by reference counts."""
    gc.collect()
    gc.disable()
    try:
        p = peers(keepalive_interval=5.0, keepalive_timeout=2.0)
        p.tick(T0 + 5)
        p.client(client_frame(Opcode.TEXT, b"ok") + bytes([0x83, 0x80, 0, 0, 0, 0]))
        assert p.relay.error(C2B) is not None and p.relay.close_code == 1002
        del p
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_extensions_are_learned_from_the_backends_101() -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Extensions: x\r\n\r\n"
    assert negotiated_extensions(head)
    assert not negotiated_extensions(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    # Only the field itself, with a value: not one whose name ends with it, not an empty one.
    lookalike = b"HTTP/1.1 101 Switching Protocols\r\nX-Sec-WebSocket-Extensions: x\r\n\r\n"
    assert not negotiated_extensions(lookalike)
    empty = b"HTTP/1.1 101 Switching Protocols\r\nsec-websocket-extensions: \r\n\r\n"
    assert not negotiated_extensions(empty)


# ---------------------------------------------------------------------- idle, drain


def test_idle_timeout_closes_both_with_1001_then_finishes_on_both_replies() -> None:
    p = peers(idle_timeout=10)
    assert p.relay.next_deadline() == T0 + 10
    p.tick(T0 + 9.9)
    assert p.to_client == p.to_backend == b""
    p.tick(T0 + 10)
    assert p.actions & COUNT_IDLE_TIMEOUT
    assert closes(p.frames_to_client()) == [(1001, "idle timeout")]
    assert closes(p.frames_to_backend()) == [(1001, "idle timeout")]
    assert not p.finished
    p.client(client_frame(Opcode.CLOSE, close_payload(1001)), T0 + 10.1)
    assert not p.finished
    p.backend(backend_frame(Opcode.CLOSE, close_payload(1001)), T0 + 10.2)
    assert p.finished
    assert (p.relay.close_code, p.relay.closed_by) == (1001, "proxy")
    # The peers' replies answer the proxy: neither is relayed to the other peer.
    assert len(closes(p.frames_to_client())) == len(closes(p.frames_to_backend())) == 1


def test_activity_moves_the_idle_deadline() -> None:
    p = peers(idle_timeout=10)
    p.client(client_frame(Opcode.TEXT, b"a"), T0 + 8)
    assert p.relay.next_deadline() == T0 + 18
    p.tick(T0 + 10)
    assert p.to_client == b""
    p.backend(backend_frame(Opcode.TEXT, b"b"), T0 + 15)
    p.tick(T0 + 18)
    assert p.to_client == backend_frame(Opcode.TEXT, b"b")
    p.tick(T0 + 25)
    assert closes(p.frames_to_client()) == [(1001, "idle timeout")]


def test_drain_closes_with_1001_at_its_deadline() -> None:
    p = peers(idle_timeout=60)
    p.relay.drain(T0 + 5)
    assert p.relay.next_deadline() == T0 + 5
    p.tick(T0 + 5)
    assert closes(p.frames_to_client()) == [(1001, "going away")]
    assert closes(p.frames_to_backend()) == [(1001, "going away")]
    assert not p.actions & COUNT_IDLE_TIMEOUT


def test_close_timer_finishes_when_a_peer_never_answers_the_proxys_close() -> None:
    p = peers(close_timeout=3)
    p.relay.close(1001, "going away", T0)
    p.collect()
    p.client(client_frame(Opcode.CLOSE, close_payload(1001)), T0 + 0.5)
    assert p.relay.next_deadline() == T0 + 3
    p.tick(T0 + 2.9)
    assert not p.finished
    p.tick(T0 + 3)
    assert p.finished


def test_proxy_close_waits_for_a_frame_in_flight() -> None:
    p = peers()
    frame = backend_frame(Opcode.BINARY, b"z" * 1000)
    p.backend(frame[:100])
    p.relay.close(1001, "going away", T0)
    p.collect()
    assert p.to_client == frame[:100]  # no Close inside a frame
    p.backend(frame[100:])
    assert p.to_client[: len(frame)] == frame
    assert closes(p.frames_to_client()) == [(1001, "going away")]


# ---------------------------------------------------------------------- peers close


def test_a_client_close_is_relayed_and_bounded_by_the_close_timer() -> None:
    p = peers(close_timeout=3)
    close = client_frame(Opcode.CLOSE, close_payload(1000, "bye"))
    p.client(close, T0 + 1)
    assert p.to_backend == close
    assert (p.relay.close_code, p.relay.closed_by) == (1000, "client")
    assert p.relay.next_deadline() == T0 + 4
    p.tick(T0 + 4)
    assert p.finished  # the backend never answered: both TCP connections go


def test_backend_close_reply_is_relayed_and_its_tcp_end_finishes() -> None:
    p = peers()
    p.client(client_frame(Opcode.CLOSE, close_payload(1000)))
    reply = backend_frame(Opcode.CLOSE, close_payload(1000))
    p.backend(reply)
    assert p.to_client == reply
    assert not p.finished  # the backend ends TCP first (RFC 6455 §7.1.1)
    p.relay.backend_lost(T0 + 0.1)
    p.collect()
    assert p.finished


def test_backend_that_closes_and_half_closes_gets_the_client_read_again() -> None:
    p = peers()
    p.backend(backend_frame(Opcode.CLOSE, close_payload(1009, "too many fragments")))
    assert p.relay.backend_ended(T0)
    p.collect()
    assert p.actions & RESUME_CLIENT
    p.client(client_frame(Opcode.TEXT, b"late", fin=False))
    assert p.to_backend == b""  # nobody reads it any more
    p.client(client_frame(Opcode.CLOSE, close_payload(1009)))
    assert p.finished


# ---------------------------------------------------------------------- a peer vanishes


def test_backend_gone_between_frames_gives_the_client_1014() -> None:
    p = peers()
    p.relay.backend_lost(T0)
    p.collect()
    assert closes(p.frames_to_client()) == [(1014, "backend failure")]
    assert (p.relay.close_code, p.relay.closed_by) == (1014, "proxy")
    assert not p.finished
    p.client(client_frame(Opcode.CLOSE, close_payload(1014)))
    assert p.finished
    assert p.to_backend == b""


def test_backend_gone_mid_frame_closes_the_client_at_once() -> None:
    p = peers()
    frame = backend_frame(Opcode.BINARY, b"q" * 500)
    p.backend(frame[:200])
    p.relay.backend_lost(T0)
    p.collect()
    assert p.finished
    assert p.to_client == frame[:200]  # no Close frame can follow a partial frame


def test_client_gone_between_frames_counts_1006_and_tells_the_backend_1001() -> None:
    p = peers()
    p.relay.client_lost()
    p.collect()
    assert (p.relay.close_code, p.relay.closed_by) == (1006, "client")
    assert closes(p.frames_to_backend()) == [(1001, "client gone")]
    assert p.finished


def test_client_gone_mid_frame_sends_the_backend_nothing_more() -> None:
    p = peers()
    frame = client_frame(Opcode.BINARY, b"q" * 500)
    p.client(frame[:200])
    p.relay.client_lost()
    p.collect()
    assert p.to_backend == frame[:200]
    assert p.relay.close_code == 1006
    assert p.finished


# ---------------------------------------------------------------------- protocol errors


def raw_client_frame(b0: int, payload: bytes = b"", masked: bool = True) -> bytes:
    key = b"\x01\x02\x03\x04"
    head = bytes([b0, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


BAD_CLIENT_FRAMES = {
    "unmasked": raw_client_frame(0x81, b"hi", masked=False),
    "rsv1 without extension": raw_client_frame(0xC1, b"hi"),
    "rsv3 without extension": raw_client_frame(0x91, b"hi"),
    **{f"opcode {op:#x}": raw_client_frame(0x80 | op, b"") for op in (3, 4, 5, 6, 7)},
    **{f"opcode {op:#x}": raw_client_frame(0x80 | op, b"") for op in range(0xB, 0x10)},
    "fragmented ping": raw_client_frame(0x09, b""),
}


@pytest.mark.parametrize("bad", list(BAD_CLIENT_FRAMES), ids=list(BAD_CLIENT_FRAMES))
def test_client_protocol_error_fails_toward_the_backend_first(bad: str) -> None:
    p = peers(close_timeout=3)
    good = client_frame(Opcode.TEXT, b"question")
    p.client(good + BAD_CLIENT_FRAMES[bad] + client_frame(Opcode.TEXT, b"after"), T0)
    assert p.to_backend[: len(good)] == good
    assert [f.opcode for f in p.frames_to_backend()] == [Opcode.TEXT, Opcode.CLOSE]
    assert closes(p.frames_to_backend()) == [(1002, closes(p.frames_to_backend())[0][1])]
    assert p.to_client == b""  # the client hears nothing yet
    assert (p.relay.close_code, p.relay.closed_by) == (1002, "proxy")
    # The backend's answer to the earlier, valid message still reaches the client.
    answer = backend_frame(Opcode.TEXT, b"answer")
    p.backend(answer, T0 + 0.1)
    assert p.to_client == answer
    assert not p.finished
    reply = backend_frame(Opcode.CLOSE, close_payload(1002))
    p.backend(reply, T0 + 0.2)
    assert p.to_client == answer + reply
    assert p.finished


def test_rsv_bits_pass_when_the_101_negotiated_an_extension() -> None:
    p = Peers(Relay(settings(), T0, extensions=True))
    frame = raw_client_frame(0xC1, b"compressed")
    p.client(frame)
    assert p.to_backend == frame
    assert p.relay.close_code == 1005 and not p.relay.closed_by


def test_client_protocol_error_closes_the_client_when_the_backend_never_answers() -> None:
    p = peers(close_timeout=3)
    p.client(BAD_CLIENT_FRAMES["unmasked"], T0)
    p.tick(T0 + 2.9)
    assert p.to_client == b""
    p.tick(T0 + 3)
    assert closes(p.frames_to_client()) == [(1002, "protocol error")]
    assert p.finished


def test_oversized_client_message_fails_toward_the_backend_with_1009() -> None:
    p = peers(max_message=100)
    p.client(client_frame(Opcode.TEXT, b"a" * 60, fin=False))
    p.client(client_frame(Opcode.CONT, b"b" * 60))
    assert closes(p.frames_to_backend()) == [(1009, "message too big")]
    assert p.to_client == b""
    p.backend(backend_frame(Opcode.CLOSE, close_payload(1009)))
    assert closes(p.frames_to_client()) == [(1009, "")]
    assert not p.finished  # framing still followed: wait for the client's reply
    p.client(client_frame(Opcode.CLOSE, close_payload(1009)))
    assert p.finished
    assert len(closes(p.frames_to_backend())) == 1


def test_backend_protocol_error_closes_both_at_once() -> None:
    p = peers()
    p.backend(bytes([0x8B, 0x00]))  # reserved control opcode 0xB
    assert closes(p.frames_to_client()) == [(1002, "reserved opcode 11")]
    assert closes(p.frames_to_backend()) == [(1002, "reserved opcode 11")]
    assert (p.relay.close_code, p.relay.closed_by) == (1002, "proxy")


# ---------------------------------------------------------------------- keepalive


def test_keepalive_pings_both_peers_and_swallows_their_pongs() -> None:
    p = peers(keepalive_interval=5, keepalive_timeout=2, idle_timeout=60)
    assert p.relay.next_deadline() == T0 + 5
    p.tick(T0 + 5)
    (ping_c,) = p.frames_to_client()
    (ping_b,) = p.frames_to_backend()
    assert ping_c.opcode is ping_b.opcode is Opcode.PING
    assert ping_c.data == ping_b.data
    assert p.to_backend[1] & 0x80 and not p.to_client[1] & 0x80  # masked toward backends
    sent_client, sent_backend = len(p.to_client), len(p.to_backend)
    p.client(client_frame(Opcode.PONG, ping_c.data), T0 + 5.5)
    p.backend(backend_frame(Opcode.PONG, ping_b.data), T0 + 5.5)
    assert (len(p.to_client), len(p.to_backend)) == (sent_client, sent_backend)
    p.tick(T0 + 7)
    assert not p.actions & COUNT_KEEPALIVE_TIMEOUT
    # Someone else's pong is theirs: relayed.
    foreign = client_frame(Opcode.PONG, b"app")
    p.client(foreign, T0 + 8)
    assert p.to_backend.endswith(foreign)


def test_keepalive_timeout_gives_1011_at_interval_plus_timeout() -> None:
    p = peers(keepalive_interval=5, keepalive_timeout=2, idle_timeout=60)
    p.tick(T0 + 5.04)  # a late tick must not stretch the bound
    (ping_c,) = p.frames_to_client()
    p.client(client_frame(Opcode.PONG, ping_c.data), T0 + 5.5)  # only the client answers
    assert p.relay.next_deadline() == T0 + 7
    p.tick(T0 + 7)
    assert p.actions & COUNT_KEEPALIVE_TIMEOUT
    assert closes(p.frames_to_client()) == [(1011, "keepalive timeout")]


def test_keepalive_ping_waits_for_the_frame_in_flight() -> None:
    p = peers(keepalive_interval=5, keepalive_timeout=2)
    frame = backend_frame(Opcode.BINARY, b"m" * 400)
    p.backend(frame[:50], T0 + 4)
    p.tick(T0 + 5)
    assert p.to_client == frame[:50]
    p.backend(frame[50:60], T0 + 6)  # the backend still sends: its pong waits behind
    p.tick(T0 + 7)  # the client's ping is still queued behind the frame: not late yet
    assert not p.actions & COUNT_KEEPALIVE_TIMEOUT
    p.backend(frame[60:], T0 + 7.5)
    assert p.to_client.startswith(frame)
    assert [f.opcode for f in p.frames_to_client()] == [Opcode.BINARY, Opcode.PING]
    p.tick(T0 + 9.5)  # then neither answered its ping: late
    assert p.actions & COUNT_KEEPALIVE_TIMEOUT


def test_no_keepalive_ping_after_a_peers_close() -> None:
    p = peers(keepalive_interval=5, keepalive_timeout=2, close_timeout=30)
    p.client(client_frame(Opcode.CLOSE, close_payload(1000)), T0 + 1)
    p.tick(T0 + 5)
    assert [f.opcode for f in p.frames_to_backend()] == [Opcode.CLOSE]
    assert p.to_client == b""


def test_close_payload_helper_matches_the_wire() -> None:
    assert close_payload(1000, "x") == struct.pack("!H", 1000) + b"x"
