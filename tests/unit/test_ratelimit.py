"""Token bucket arithmetic of dataplane.ratelimit."""

from __future__ import annotations

import pytest

from dataplane.ratelimit import TokenBucket

pytestmark = pytest.mark.unit


def test_full_burst_is_admitted_then_refused() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(100.0) for _ in range(6)] == [True] * 5 + [False]


def test_burst_defaults_to_one_second_of_rate() -> None:
    bucket = TokenBucket(rate=3)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]


def test_tokens_refill_at_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=2)
    assert bucket.take(0.0)
    assert bucket.take(0.0)
    assert not bucket.take(0.05)  # half a token
    assert bucket.take(0.1)
    assert not bucket.take(0.1)


def test_refill_never_exceeds_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=3)
    bucket.take(0.0)
    results = [bucket.take(3600.0) for _ in range(4)]
    assert results == [True, True, True, False]


def test_retry_after_says_when_the_next_token_arrives() -> None:
    bucket = TokenBucket(rate=4, burst=1)
    assert bucket.retry_after(0.0) == 0.0
    assert bucket.take(0.0)
    assert bucket.retry_after(0.0) == pytest.approx(0.25)
    assert bucket.retry_after(0.1) == pytest.approx(0.15)
    assert bucket.retry_after(0.3) == 0.0
    assert bucket.take(0.3)


def test_clock_going_backwards_does_not_drain_or_fill() -> None:
    bucket = TokenBucket(rate=1, burst=1)
    assert bucket.take(10.0)
    assert not bucket.take(5.0)
    assert bucket.retry_after(5.0) == pytest.approx(1.0)
    assert bucket.take(11.0)


def test_slow_rate_still_admits_one() -> None:
    bucket = TokenBucket(rate=0.5)
    assert bucket.take(0.0)
    assert not bucket.take(1.0)
    assert bucket.take(2.0)


@pytest.mark.parametrize(("rate", "burst"), [(0, None), (-1, None), (5, 0.5)])
def test_nonsense_settings_are_refused(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)
