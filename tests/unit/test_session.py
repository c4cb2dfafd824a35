"""The push session's rules, without sockets."""

from __future__ import annotations

import itertools

from lbwire.messages import Ack, Nack, NackError, SnapshotMessage, decode, encode
from lbwire.session import PushSession
from lbwire.snapshot import Snapshot, parse_snapshot


def snap(version: str, port: int = 8080, generation: int = 1) -> Snapshot:
    return parse_snapshot(
        {"version": version, "listeners": [{"name": "ws", "port": port, "generation": generation}]}
    )


def session(**kwargs: object) -> PushSession:
    counter = itertools.count(1)
    return PushSession("node-a", "ns/lb", nonce_factory=lambda: f"n{next(counter)}", **kwargs)  # type: ignore[arg-type]


def test_first_offer_is_sent_and_ack_records_applied_generations() -> None:
    s = session()
    message = s.offer(snap("1"))
    assert isinstance(message, SnapshotMessage)
    assert (message.version, message.nonce) == ("1", "n1")
    assert message.digest == snap("1").digest()
    assert s.on_ack(Ack(version="1", nonce="n1")) is None
    assert s.applied_version == "1"
    assert s.applied_generations() == {"ws": 1}


def test_one_in_flight_and_newest_pending_replaces_older() -> None:
    s = session()
    assert s.offer(snap("1", 8080)) is not None
    assert s.offer(snap("2", 8081)) is None
    assert s.offer(snap("3", 8082)) is None
    following = s.on_ack(Ack(version="1", nonce="n1"))
    assert following is not None and following.version == "3"
    assert s.on_ack(Ack(version="3", nonce="n2")) is None
    assert s.applied_version == "3"


def test_unchanged_digest_sends_nothing_even_with_a_new_version() -> None:
    s = session()
    s.offer(snap("1"))
    s.on_ack(Ack(version="1", nonce="n1"))
    assert s.offer(snap("2")) is None  # same content, new version label


def test_pending_equal_to_in_flight_is_dropped() -> None:
    s = session()
    s.offer(snap("1", 8080))
    s.offer(snap("2", 8081))
    s.offer(snap("3", 8080))  # back to what is in flight
    assert s.on_ack(Ack(version="1", nonce="n1")) is None


def test_stale_nonce_is_ignored() -> None:
    s = session()
    s.offer(snap("1"))
    assert s.on_ack(Ack(version="1", nonce="old")) is None
    assert s.applied_version is None
    assert s.in_flight is not None


def test_nack_keeps_applied_records_error_and_does_not_resend_same_digest() -> None:
    s = session()
    s.offer(snap("1", 8080))
    s.on_ack(Ack(version="1", nonce="n1"))
    s.offer(snap("2", 8081))
    error = NackError(reason="BindFailed", message="port in use", listeners=["ws"])
    assert s.on_nack(Nack(nonce="n2", applied_version="1", error=error)) is None
    assert s.applied_version == "1"
    assert s.last_error == error
    assert s.offer(snap("3", 8081)) is None  # same content as the rejected one
    fixed = s.offer(snap("4", 8082))
    assert fixed is not None and fixed.version == "4"


def test_hello_with_matching_digest_sends_nothing_after_restart() -> None:
    desired = snap("7")
    s = session(applied_version="7", applied_digest=desired.digest())
    assert s.offer(desired) is None
    assert s.applied_generations() == {"ws": 1}


def test_messages_round_trip_and_garbage_is_a_protocol_error() -> None:
    import pytest

    from lbwire.errors import ProtocolError

    message = SnapshotMessage.of(snap("1"), "n1")
    again = decode(encode(message))
    assert again == message
    assert parse_snapshot(again.snapshot if isinstance(again, SnapshotMessage) else {}) == snap("1")
    for garbage in ("nope", "{}", '{"type":"ack"}', '{"type":"boom"}', "[1]"):
        with pytest.raises(ProtocolError):
            decode(garbage)
