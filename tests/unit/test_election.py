"""Lease election rules with an in-memory Lease (optimistic concurrency like the API
server's resourceVersion) and fake clocks: nothing sleeps."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from controller.election import Elector, Record


class MemoryLease:
    """One Lease; a write whose resourceVersion is stale is refused (a 409)."""

    def __init__(self) -> None:
        self.record: Record | None = None
        self.version = 0
        self.writes: list[Record] = []

    async def get(self) -> Record | None:
        return self.record

    async def create(self, record: Record) -> Record | None:
        if self.record is not None:
            return None
        return self._store(record)

    async def update(self, record: Record) -> Record | None:
        if self.record is None or record.resource_version != self.record.resource_version:
            return None
        return self._store(record)

    def _store(self, record: Record) -> Record:
        self.version += 1
        self.record = replace(record, resource_version=str(self.version))
        self.writes.append(self.record)
        return self.record


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def wall(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=self.now)

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def elector(lease: MemoryLease, identity: str, clock: Clock, duration: float = 15) -> Elector:
    return Elector(lease, identity, duration, clock=clock, wall=clock.wall, sleep=clock.sleep)


async def test_first_replica_creates_the_lease_and_leads() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock)
    assert await a.try_acquire_or_renew()
    assert a.leading
    assert lease.record is not None
    assert (lease.record.holder, lease.record.duration, lease.record.transitions) == ("a", 15, 0)


async def test_standby_waits_for_the_lease_to_expire_on_its_own_clock() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    clock.now += 14
    assert not await b.try_acquire_or_renew()  # a's record unchanged for 14 s of 15
    assert await a.try_acquire_or_renew()  # a renews...
    clock.now += 1
    assert not await b.try_acquire_or_renew()  # ...b sees the change: its wait restarts
    clock.now += 14
    assert not await b.try_acquire_or_renew()
    clock.now += 2  # 16 s since b last saw the record change: a is gone
    assert await b.try_acquire_or_renew()
    assert lease.record is not None
    assert (lease.record.holder, lease.record.transitions) == ("b", 1)
    assert not await a.try_acquire_or_renew()  # a learns it at its next renewal
    assert not a.leading


async def test_two_replicas_racing_cannot_both_win() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    results = await asyncio.gather(a.try_acquire_or_renew(), b.try_acquire_or_renew())
    assert sorted(results) == [False, True]
    assert lease.record is not None and lease.record.holder in {"a", "b"}


async def test_released_lease_is_taken_at_once() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    assert await a.try_acquire_or_renew()
    assert not await b.try_acquire_or_renew()
    await a.release()
    assert lease.record is not None and lease.record.holder == ""
    assert await b.try_acquire_or_renew()  # no 15 s wait


async def test_keep_returns_when_another_replica_took_over() -> None:
    lease, clock = MemoryLease(), Clock()
    a, b = elector(lease, "a", clock), elector(lease, "b", clock)
    await a.acquire()
    assert lease.record is not None
    # b takes the Lease (as if a had been cut off long enough).
    lease.record = replace(lease.record, holder="b")
    lease.version += 1
    lease.record = replace(lease.record, resource_version=str(lease.version))
    await asyncio.wait_for(a.keep(), timeout=5)
    assert not a.leading
    del b


async def test_keep_gives_up_after_the_renew_deadline_without_the_api_server() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock, duration=15)
    await a.acquire()

    async def broken() -> Record | None:
        raise ConnectionError("API server unreachable")

    lease.get = broken  # type: ignore[method-assign]
    started = clock.now
    await asyncio.wait_for(a.keep(), timeout=5)
    assert not a.leading
    # Gave up after the renew deadline (10 s of a 15 s Lease), before the Lease expired
    # for a standby: two leaders never overlap.
    assert 10 <= clock.now - started < 15


async def test_keep_gives_up_when_a_renewal_hangs_past_the_renew_deadline() -> None:
    """A renewal that never answers (a slow API server) is cut at the renew deadline: the
    leader steps down before a standby may take the Lease, not when the request returns."""
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock, duration=0.6)  # renew deadline 0.4 s, retry 0.08 s
    await a.acquire()
    hung = asyncio.Event()

    async def hanging() -> Record | None:
        await hung.wait()  # never set
        return None

    lease.get = hanging  # type: ignore[method-assign]
    await asyncio.wait_for(a.keep(), timeout=5)
    assert not a.leading


async def test_keep_renews_while_the_api_server_answers() -> None:
    lease, clock = MemoryLease(), Clock()
    a = elector(lease, "a", clock, duration=15)
    await a.acquire()
    task = asyncio.create_task(a.keep())
    while clock.now < 1000 + 60:  # a minute of fake time
        await asyncio.sleep(0)
    assert not task.done() and a.leading
    task.cancel()
    renewals = [w for w in lease.writes if w.holder == "a"]
    assert len(renewals) >= 60 / 2  # every 2 s
    assert lease.record is not None and lease.record.transitions == 0


@pytest.mark.parametrize(("duration", "deadline", "retry"), [(15, 10, 2), (3, 2, 0.4)])
def test_timings_follow_client_go_proportions(duration: int, deadline: float, retry: float) -> None:
    e = elector(MemoryLease(), "a", Clock(), duration=duration)
    assert (e.renew_deadline, e.retry) == pytest.approx((deadline, retry))
