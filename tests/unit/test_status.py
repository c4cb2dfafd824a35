"""Programmed from real push sessions driven by acks and nacks; condition merging."""

from __future__ import annotations

import itertools

from controller import status as st
from lbwire.messages import Ack, Nack, NackError
from lbwire.session import PushSession
from lbwire.snapshot import Snapshot, parse_snapshot


def snap(version: str, generations: dict[str, int]) -> Snapshot:
    listeners = [
        {"name": name, "port": 8000 + i, "generation": generation}
        for i, (name, generation) in enumerate(sorted(generations.items()))
    ]
    return parse_snapshot({"version": version, "listeners": listeners})


def session(node: str) -> PushSession:
    counter = itertools.count(1)
    return PushSession(node, "default/lb", nonce_factory=lambda: f"{node}-{next(counter)}")


def ack(s: PushSession) -> None:
    assert s.in_flight is not None
    nonce, snapshot = s.in_flight
    s.on_ack(Ack(version=snapshot.version, nonce=nonce))


def nack(s: PushSession, listeners: list[str], message: str = "bind failed") -> None:
    assert s.in_flight is not None
    error = NackError(reason="BindFailed", message=message, listeners=listeners)
    s.on_nack(Nack(nonce=s.in_flight[0], error=error))


def programmed(name: str, generation: int, sessions: list[PushSession]) -> st.Condition:
    return st.listener_programmed(name, generation, sessions, in_snapshot=True, why_not="")


def test_no_connected_data_plane_is_no_data_planes() -> None:
    condition = programmed("web", 1, [])
    assert (condition.status, condition.reason) == (st.FALSE, "NoDataPlanes")


def test_programmed_when_every_data_plane_acked_the_generation() -> None:
    a, b = session("a"), session("b")
    for s in (a, b):
        s.offer(snap("1", {"web": 3}))
    ack(a)
    pending = programmed("web", 3, [a, b])
    assert (pending.status, pending.reason) == (st.FALSE, "Pending")
    assert "1 of 2" in pending.message and "b" in pending.message
    ack(b)
    done = programmed("web", 3, [a, b])
    assert (done.status, done.reason, done.observed_generation) == (st.TRUE, "Programmed", 3)


def test_older_generation_acked_is_still_pending() -> None:
    a = session("a")
    a.offer(snap("1", {"web": 1}))
    ack(a)
    a.offer(snap("2", {"web": 2}))  # in flight, not yet acked
    assert programmed("web", 2, [a]).reason == "Pending"
    ack(a)
    assert programmed("web", 2, [a]).status == st.TRUE


def test_nack_naming_the_listener_is_rejected_with_its_message() -> None:
    a = session("a")
    a.offer(snap("1", {"web": 1, "api": 1}))
    nack(a, ["web"], "port 80 in use")
    web = programmed("web", 1, [a])
    assert (web.status, web.reason) == (st.FALSE, "Rejected")
    assert "port 80 in use" in web.message and "BindFailed" in web.message
    # A nack naming another listener does not reject this one (it is simply not applied).
    api = programmed("api", 1, [a])
    assert api.reason == "Pending"


def test_nack_naming_no_listener_rejects_all() -> None:
    a = session("a")
    a.offer(snap("1", {"web": 1, "api": 1}))
    nack(a, [], "invalid snapshot")
    assert programmed("web", 1, [a]).reason == "Rejected"
    assert programmed("api", 1, [a]).reason == "Rejected"


def test_ack_after_nack_clears_rejected() -> None:
    a = session("a")
    a.offer(snap("1", {"web": 1}))
    nack(a, ["web"])
    a.offer(snap("2", {"web": 2}))
    ack(a)
    assert programmed("web", 2, [a]).status == st.TRUE


def test_one_rejecting_data_plane_is_enough() -> None:
    a, b = session("a"), session("b")
    for s in (a, b):
        s.offer(snap("1", {"web": 1}))
    ack(a)
    nack(b, ["web"])
    assert programmed("web", 1, [a, b]).reason == "Rejected"


def test_listener_left_out_of_the_snapshot_is_pending_with_the_reason() -> None:
    condition = st.listener_programmed("web", 1, [], in_snapshot=False, why_not="Secret x")
    assert (condition.status, condition.reason, condition.message) == (
        st.FALSE,
        "Pending",
        "Secret x",
    )


def test_load_balancer_programmed_follows_the_digest() -> None:
    a = session("a")
    first = snap("1", {"web": 1})
    assert st.load_balancer_programmed(first.digest(), [], 1).reason == "NoDataPlanes"
    a.offer(first)
    assert st.load_balancer_programmed(first.digest(), [a], 1).reason == "Pending"
    ack(a)
    assert st.load_balancer_programmed(first.digest(), [a], 1).status == st.TRUE
    assert st.acked_count(first.digest(), [a]) == 1
    assert st.applied_version([a]) == "1"
    second = snap("2", {"web": 2})
    a.offer(second)
    nack(a, [])
    assert st.load_balancer_programmed(second.digest(), [a], 1).reason == "Rejected"
    assert st.acked_count(second.digest(), [a]) == 0


def test_applied_version_is_the_oldest_numerically() -> None:
    a, b = session("a"), session("b")
    a.offer(snap("999", {"web": 1}))
    ack(a)
    b.offer(snap("1000", {"web": 2}))
    ack(b)
    assert st.applied_version([b, a]) == "999"
    assert st.applied_version([]) is None


def test_transition_time_moves_only_when_status_changes() -> None:
    first = st.merge_conditions(
        [], [st.Condition("Programmed", st.FALSE, "Pending", "", 1)], "2026-01-01T00:00:00Z"
    )
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    same = st.merge_conditions(
        first,
        [st.Condition("Programmed", st.FALSE, "NoDataPlanes", "none", 2)],
        "2026-01-02T00:00:00Z",
    )
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert (same[0]["reason"], same[0]["observedGeneration"]) == ("NoDataPlanes", 2)
    flipped = st.merge_conditions(
        same, [st.Condition("Programmed", st.TRUE, "Programmed", "", 2)], "2026-01-03T00:00:00Z"
    )
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert flipped[0] == {
        "type": "Programmed",
        "status": "True",
        "reason": "Programmed",
        "message": "",
        "observedGeneration": 2,
        "lastTransitionTime": "2026-01-03T00:00:00Z",
    }


def test_desired_data_planes_that_never_connected_keep_programmed_false() -> None:
    a = session("a")
    a.offer(snap("1", {"web": 1}))
    ack(a)
    digest = a.applied_digest
    short = st.listener_programmed("web", 1, [a], True, "", desired=3)
    assert (short.status, short.reason) == (st.FALSE, "Pending")
    assert short.message == "2 of 3 desired data planes not connected"
    lb_short = st.load_balancer_programmed(digest, [a], 1, desired=2)
    assert (lb_short.status, lb_short.message) == (
        st.FALSE,
        "1 of 2 desired data planes not connected",
    )
    # All desired are connected (a surge pod during a rollout counts too).
    assert st.listener_programmed("web", 1, [a], True, "", desired=1).status == st.TRUE
    assert st.load_balancer_programmed(digest, [a], 1, desired=1).status == st.TRUE
