"""The plain counters of counts.py: their compiled helpers give what the library calls and
label functions they replace give."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from dataplane.counts import (
    DURATION_BUCKETS,
    HANDSHAKE_BUCKETS,
    REQUEST_BUCKETS,
    ConnectionCounts,
    TrafficTotals,
    bucket,
    close_code_label,
    fold_close_code,
    folded_label,
)


@given(st.floats(min_value=0, max_value=200_000, allow_nan=False))
def test_bucket_is_bisect_left(value: float) -> None:
    for bounds in (HANDSHAKE_BUCKETS, DURATION_BUCKETS, REQUEST_BUCKETS):
        assert bucket(bounds, value) == bisect_left(bounds, value)
        for bound in bounds:  # exactly on a bound: that bound's bucket (le="bound")
            assert bucket(bounds, float(bound)) == bisect_left(bounds, bound)


def test_a_folded_close_code_is_named_as_its_label() -> None:
    for code in [*range(0, 5100), 65535]:
        assert folded_label(fold_close_code(code)) == close_code_label(code), code
    assert len({fold_close_code(code) for code in range(65536)}) == 18  # bounded


def test_closes_are_counted_by_folded_code_and_initiator() -> None:
    counts = ConnectionCounts()
    for code in (1000, 1000, 3001, 3999, 4321, 2999):
        counts.closed(code, "client", 2.0)
    counts.closed(1000, "backend", 90_000.0)
    assert counts.closes == {
        (1000, "client"): 2,
        (3000, "client"): 2,
        (4000, "client"): 1,
        (-1, "client"): 1,
        (1000, "backend"): 1,
    }
    assert counts.durations[bisect_left(DURATION_BUCKETS, 2.0)] == 6
    assert counts.durations[-1] == 1  # past the last bound: +Inf


def test_traffic_totals_copy_is_independent() -> None:
    totals = TrafficTotals()
    totals.messages_c2b = 3
    totals.backend_connections["a"] = 1
    copy = totals.copy()
    copy.messages_c2b += 1
    copy.backend_connections["a"] += 1
    assert (totals.messages_c2b, totals.backend_connections) == (3, {"a": 1})
    assert (copy.messages_c2b, copy.backend_connections) == (4, {"a": 2})
