"""Schedulers of dataplane.balancer, driven without sockets."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers

from dataplane.balancer import Balancer, EndpointState, RequestInfo, hash_key
from lbwire.snapshot import Backends, Endpoint, HashPolicy, HashSource, Scheduler

pytestmark = pytest.mark.unit


def states(**weights: int) -> dict[str, EndpointState]:
    """Endpoints named by keyword, e.g. states(a=3, b=1)."""
    return {
        key: EndpointState(key=key, address=key, port=80, weight=weight)
        for key, weight in weights.items()
    }


def request(source_ip: str = "192.0.2.1", path: str = "/", **headers: str) -> RequestInfo:
    return RequestInfo(source_ip=source_ip, path=path, headers=Headers(**headers))


def balancer(
    scheduler: Scheduler, endpoints: dict[str, EndpointState], **hash_policy: str
) -> Balancer:
    backends = Backends(scheduler=scheduler, hash=HashPolicy(**hash_policy))
    return Balancer(backends, endpoints)


def picks(chooser: Balancer, count: int) -> list[str]:
    chosen = []
    for _ in range(count):
        state = chooser.pick(request())
        assert state is not None
        chosen.append(state.key)
    return chosen


# --- endpoint state -------------------------------------------------------------------


def test_endpoint_state_is_eligible_only_when_ready_healthy_not_draining_and_weighted() -> None:
    state = EndpointState(key="a", address="a", port=80, weight=1)
    assert state.eligible
    for field, value in [("ready", False), ("healthy", False), ("draining", True), ("weight", 0)]:
        changed = EndpointState(key="a", address="a", port=80, weight=1)
        setattr(changed, field, value)
        assert not changed.eligible, field


def test_endpoint_state_apply_keeps_live_fields() -> None:
    state = EndpointState.from_endpoint(Endpoint(address="::1", port=9000, weight=5))
    assert state.key == "[::1]:9000"
    state.active, state.healthy = 7, False
    state.apply(Endpoint(address="::1", port=9000, weight=9, draining=True))
    assert (state.weight, state.draining, state.active, state.healthy) == (9, True, 7, False)


# --- smooth weighted round robin ------------------------------------------------------


def test_wrr_weights_three_to_one_give_exactly_300_and_100_of_400() -> None:
    counts = Counter(picks(balancer(Scheduler.WRR, states(a=3, b=1)), 400))
    assert counts == {"a": 300, "b": 100}


def test_wrr_interleaves_instead_of_bursting() -> None:
    """Smooth WRR never sends the heavy endpoint its whole share in a row."""
    assert picks(balancer(Scheduler.WRR, states(a=5, b=1, c=1)), 7) == [
        "a",
        "a",
        "b",
        "a",
        "c",
        "a",
        "a",
    ]


def test_wrr_skips_weight_zero_and_ineligible() -> None:
    endpoints = states(a=2, b=0, c=1, d=1)
    endpoints["d"].healthy = False
    counts = Counter(picks(balancer(Scheduler.WRR, endpoints), 300))
    assert counts == {"a": 200, "c": 100}


# --- round robin ----------------------------------------------------------------------


def test_rr_spreads_evenly_ignoring_weights() -> None:
    counts = Counter(picks(balancer(Scheduler.RR, states(a=100, b=1, c=50)), 300))
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_rr_stays_even_when_an_endpoint_in_the_middle_is_ineligible() -> None:
    endpoints = states(a=1, b=1, c=1)
    endpoints["b"].ready = False
    assert picks(balancer(Scheduler.RR, endpoints), 4) == ["a", "c", "a", "c"]


# --- weighted least connections -------------------------------------------------------


def test_wlc_prefers_fewest_active_per_weight() -> None:
    endpoints = states(a=1, b=3)
    endpoints["a"].active = 2  # load (2+1)/1 = 3
    endpoints["b"].active = 5  # load (5+1)/3 = 2
    chosen = balancer(Scheduler.WLC, endpoints).pick(request())
    assert chosen is endpoints["b"]


def test_wlc_follows_weights_when_the_proxy_counts_connections() -> None:
    endpoints = states(a=3, b=1)
    chooser = balancer(Scheduler.WLC, endpoints)
    for _ in range(400):
        state = chooser.pick(request())
        assert state is not None
        state.active += 1
    assert (endpoints["a"].active, endpoints["b"].active) == (300, 100)


def test_wlc_rotates_ties_while_active_does_not_change() -> None:
    """Handshakes in flight are not counted yet; equal loads must still spread."""
    counts = Counter(picks(balancer(Scheduler.WLC, states(a=1, b=1, c=1)), 300))
    assert counts == {"a": 100, "b": 100, "c": 100}


def test_wlc_is_the_default_scheduler() -> None:
    assert Balancer(Backends(), {}).scheduler is Scheduler.WLC


# --- exclusion and nothing eligible ---------------------------------------------------


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_exclude_skips_already_tried_endpoints(scheduler: Scheduler) -> None:
    chooser = balancer(scheduler, states(a=1, b=1, c=1))
    for _ in range(20):
        state = chooser.pick(request(), exclude={"a", "c"})
        assert state is not None
        assert state.key == "b"


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_pick_returns_none_when_nothing_is_eligible(scheduler: Scheduler) -> None:
    endpoints = states(a=1, b=1, c=0)
    endpoints["a"].draining = True
    endpoints["b"].healthy = False
    chooser = balancer(scheduler, endpoints)
    assert chooser.pick(request()) is None
    assert balancer(scheduler, {}).pick(request()) is None
    assert balancer(scheduler, states(a=1)).pick(request(), exclude=["a"]) is None


@pytest.mark.parametrize("scheduler", list(Scheduler))
def test_endpoints_added_to_the_shared_mapping_are_picked_without_a_new_balancer(
    scheduler: Scheduler,
) -> None:
    endpoints = states(a=1)
    chooser = balancer(scheduler, endpoints)
    assert chooser.pick(request()) is endpoints["a"]
    endpoints["b"] = EndpointState(key="b", address="b", port=80, weight=1)
    del endpoints["a"]
    assert chooser.pick(request()) is endpoints["b"]


# --- consistent hash ------------------------------------------------------------------


def hash_owner(chooser: Balancer, source_ip: str) -> str:
    state = chooser.pick(request(source_ip=source_ip))
    assert state is not None
    return state.key


def test_hash_same_source_ip_always_reaches_the_same_endpoint() -> None:
    chooser = balancer(Scheduler.HASH, states(a=1, b=1, c=1, d=1))
    first = [hash_owner(chooser, f"10.0.{n // 256}.{n % 256}") for n in range(500)]
    again = [hash_owner(chooser, f"10.0.{n // 256}.{n % 256}") for n in range(500)]
    assert first == again
    assert set(first) == {"a", "b", "c", "d"}


def test_hash_ring_is_identical_in_another_balancer() -> None:
    """Replicas and workers build the same ring, so they agree on every key."""
    one = balancer(Scheduler.HASH, states(a=1, b=1, c=1))
    other = balancer(Scheduler.HASH, states(c=1, b=1, a=1))
    ips = [f"172.16.0.{n}" for n in range(200)]
    assert [hash_owner(one, ip) for ip in ips] == [hash_owner(other, ip) for ip in ips]


def test_hash_removing_one_endpoint_moves_only_its_keys() -> None:
    endpoints = states(a=1, b=1, c=1, d=1, e=1)
    chooser = balancer(Scheduler.HASH, endpoints)
    ips = [f"10.1.{n // 256}.{n % 256}" for n in range(2000)]
    before = {ip: hash_owner(chooser, ip) for ip in ips}
    del endpoints["c"]
    after = {ip: hash_owner(chooser, ip) for ip in ips}
    moved = [ip for ip in ips if before[ip] != after[ip]]
    assert all(before[ip] == "c" for ip in moved)
    assert len(moved) == sum(1 for owner in before.values() if owner == "c")
    # Roughly 1/N of the keys, and the ring spreads them reasonably evenly.
    assert 0.12 < len(moved) / len(ips) < 0.28


def test_hash_ineligible_endpoint_falls_to_the_next_and_gets_its_keys_back() -> None:
    endpoints = states(a=1, b=1, c=1)
    chooser = balancer(Scheduler.HASH, endpoints)
    ips = [f"10.2.0.{n}" for n in range(200)]
    before = {ip: hash_owner(chooser, ip) for ip in ips}
    endpoints["b"].healthy = False
    during = {ip: hash_owner(chooser, ip) for ip in ips}
    assert "b" not in during.values()
    assert all(during[ip] == before[ip] for ip in ips if before[ip] != "b")
    endpoints["b"].healthy = True
    assert {ip: hash_owner(chooser, ip) for ip in ips} == before


def test_hash_virtual_nodes_follow_weights() -> None:
    chooser = balancer(Scheduler.HASH, states(a=3, b=1))
    counts = Counter(hash_owner(chooser, f"10.3.{n // 256}.{n % 256}") for n in range(4000))
    assert 0.65 < counts["a"] / 4000 < 0.85


def test_hash_exclude_falls_to_the_next_on_the_ring() -> None:
    chooser = balancer(Scheduler.HASH, states(a=1, b=1, c=1))
    owner = hash_owner(chooser, "198.51.100.7")
    retry = chooser.pick(request(source_ip="198.51.100.7"), exclude={owner})
    assert retry is not None
    assert retry.key != owner
    again = chooser.pick(request(source_ip="198.51.100.7"), exclude={owner})
    assert again is retry


def test_hash_on_header_uses_the_header_and_falls_back_to_source_ip() -> None:
    policy = HashPolicy(source=HashSource.HEADER, name="X-User")
    assert hash_key(policy, request(source_ip="192.0.2.9", **{"X-User": "alice"})) == "alice"
    assert hash_key(policy, request(source_ip="192.0.2.9", **{"x-user": "alice"})) == "alice"
    assert hash_key(policy, request(source_ip="192.0.2.9")) == "192.0.2.9"
    chooser = balancer(Scheduler.HASH, states(a=1, b=1, c=1), source="header", name="X-User")
    owners = {
        chooser.pick(request(source_ip=f"10.9.0.{n}", **{"X-User": "alice"})) for n in range(50)
    }
    assert len(owners) == 1


def test_hash_on_query_parameter_uses_it_and_falls_back_to_source_ip() -> None:
    policy = HashPolicy(source=HashSource.QUERY, name="room")
    assert hash_key(policy, request(path="/chat?user=1&room=lobby")) == "lobby"
    assert hash_key(policy, request(path="/chat?room=a%20b")) == "a b"
    assert hash_key(policy, request(source_ip="192.0.2.5", path="/chat?rooms=x")) == "192.0.2.5"
    assert hash_key(policy, request(source_ip="192.0.2.5", path="/chat")) == "192.0.2.5"


def _least_loaded(candidates: list[EndpointState]) -> list[EndpointState]:
    """The reference (the two-step pick before): candidates with the lowest
    (active + 1) / weight, compared exactly.

    active + 1 (as HAProxy's leastconn) rather than active: with every endpoint idle
    the heavier one goes first, so new connections follow the weights from the start.
    """
    best: list[EndpointState] = []
    best_load = (0, 1)
    for state in candidates:
        load = (state.active + 1, state.weight)
        if not best or load[0] * best_load[1] < best_load[0] * load[1]:
            best, best_load = [state], load
        elif load[0] * best_load[1] == best_load[0] * load[1]:
            best.append(state)
    return best


@given(
    loads=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 4)), min_size=1, max_size=6),
    cursor=st.integers(0, 20),
)
def test_one_pass_least_loaded_pick_is_the_two_step_one(
    loads: list[tuple[int, int]], cursor: int
) -> None:
    """WLC picks in one pass what _pick_next over _least_loaded's list picks."""
    states = [
        EndpointState(key=str(i), address=str(i), port=80, weight=w)
        for i, (_, w) in enumerate(loads)
    ]
    for state, (active, _) in zip(states, loads, strict=True):
        state.active = active
    endpoints = {state.key: state for state in states}
    one, two = Balancer(Backends(), endpoints), Balancer(Backends(), endpoints)
    one._cursor = two._cursor = cursor
    assert one._pick_least_loaded(states) is two._pick_next(states, _least_loaded(states))
    assert one._cursor == two._cursor
