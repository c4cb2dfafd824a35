"""The idle backend connection pool, with a fake clock."""

from __future__ import annotations

import pytest

from dataplane.pool import Pool, PoolSettings

pytestmark = pytest.mark.unit

A = ("10.0.0.1", 8080)
B = ("10.0.0.2", 8080)


class Conn:
    """An opaque connection: the pool must only keep and return it."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


def test_take_from_empty_pool_is_none() -> None:
    assert Pool[Conn]().take(A, now=0.0) is None


def test_put_then_take_returns_the_same_connection_once() -> None:
    pool = Pool[Conn]()
    conn = Conn("c")
    assert pool.put(A, conn, now=0.0) == []
    assert pool.idle(A) == 1
    assert pool.take(A, now=1.0) is conn
    assert pool.take(A, now=1.0) is None
    assert len(pool) == 0


def test_connections_are_per_endpoint() -> None:
    pool = Pool[Conn]()
    a, b = Conn("a"), Conn("b")
    pool.put(A, a, now=0.0)
    pool.put(B, b, now=0.0)
    assert pool.take(B, now=0.0) is b
    assert pool.take(B, now=0.0) is None
    assert pool.take(A, now=0.0) is a


def test_freshest_connection_is_taken_first() -> None:
    pool = Pool[Conn]()
    old, new = Conn("old"), Conn("new")
    pool.put(A, old, now=0.0)
    pool.put(A, new, now=1.0)
    assert pool.take(A, now=2.0) is new
    assert pool.take(A, now=2.0) is old


def test_over_the_per_endpoint_bound_the_oldest_is_handed_back_to_close() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_per_endpoint=2))
    conns = [Conn(f"c{i}") for i in range(3)]
    assert pool.put(A, conns[0], now=0.0) == []
    assert pool.put(A, conns[1], now=1.0) == []
    assert pool.put(A, conns[2], now=2.0) == [conns[0]]
    assert pool.idle(A) == 2
    assert pool.put(B, Conn("b"), now=2.0) == []  # the bound is per endpoint


def test_nothing_is_kept_when_the_bound_is_zero() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_per_endpoint=0))
    conn = Conn("c")
    assert pool.put(A, conn, now=0.0) == [conn]
    assert len(pool) == 0


def test_expired_connection_is_not_taken_and_is_evicted() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_age=4.0))
    conn = Conn("c")
    pool.put(A, conn, now=10.0)
    assert pool.next_expiry() == 14.0
    assert pool.evict_idle(now=13.9) == []
    assert pool.take(A, now=14.0) is None
    assert pool.evict_idle(now=14.0) == [conn]
    assert len(pool) == 0
    assert pool.next_expiry() is None


def test_eviction_takes_only_the_expired_ones() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_age=4.0))
    old, new, other = Conn("old"), Conn("new"), Conn("other")
    pool.put(A, old, now=0.0)
    pool.put(A, new, now=3.0)
    pool.put(B, other, now=1.0)
    assert pool.evict_idle(now=5.0) == [old, other]
    assert pool.take(A, now=5.0) is new


def test_backend_keepalive_timeout_shortens_the_stay_but_never_lengthens_it() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_age=4.0))
    short, long = Conn("short"), Conn("long")
    pool.put(A, short, now=0.0, ttl=1.0)
    pool.put(B, long, now=0.0, ttl=60.0)
    assert pool.take(A, now=1.5) is None
    assert pool.take(B, now=4.5) is None
    assert pool.evict_idle(now=4.5) == [short, long]


def test_a_short_lived_newer_connection_does_not_hide_an_older_valid_one() -> None:
    pool = Pool[Conn](PoolSettings(max_idle_age=4.0))
    older, newer = Conn("older"), Conn("newer")
    pool.put(A, older, now=0.0)
    pool.put(A, newer, now=1.0, ttl=1.0)
    assert pool.next_expiry() == 2.0
    assert pool.evict_idle(now=3.0) == [newer]
    pool.put(A, newer, now=3.0, ttl=0.5)
    assert pool.take(A, now=3.6) is older
    assert pool.evict_idle(now=3.6) == [newer]


def test_zero_ttl_is_not_kept() -> None:
    conn = Conn("c")
    assert Pool[Conn]().put(A, conn, now=0.0, ttl=0.0) == [conn]


def test_discard_forgets_a_connection_the_backend_closed() -> None:
    pool = Pool[Conn]()
    kept, closed = Conn("kept"), Conn("closed")
    pool.put(A, kept, now=0.0)
    pool.put(A, closed, now=1.0)
    assert pool.discard(A, closed)
    assert not pool.discard(A, closed)
    assert not pool.discard(B, closed)
    assert pool.take(A, now=1.0) is kept
    assert pool.take(A, now=1.0) is None


def test_dropping_an_endpoint_hands_back_all_its_connections() -> None:
    pool = Pool[Conn]()
    a1, a2, b = Conn("a1"), Conn("a2"), Conn("b")
    pool.put(A, a1, now=0.0)
    pool.put(A, a2, now=0.0)
    pool.put(B, b, now=0.0)
    assert pool.drop_endpoint(A) == [a1, a2]
    assert pool.drop_endpoint(A) == []
    assert pool.take(B, now=0.0) is b
    assert len(pool) == 0


def test_default_age_is_below_nodes_keepalive_timeout() -> None:
    """Node.js closes idle keep-alive connections after 5 s by default."""
    assert PoolSettings().max_idle_age < 5.0
