"""The deadline wheel fires each item at (or just after) its own deadline, moves it when
the deadline moved, and forgets discarded items (a slot is a list with swap-remove)."""

from __future__ import annotations

import asyncio
import logging
import types
from typing import Any, cast

import pytest

from dataplane.deadlines import NOT_FILED, DeadlineWheel


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.wheel_slot = NOT_FILED
        self.wheel_index = 0
        self.deadline = deadline
        self.fired_at: float | None = None
        self.loop = loop

    def deadline_due(self, now: float) -> float | None:
        if self.deadline > now:
            return self.deadline
        self.fired_at = now
        return None


async def wait_fired(items: list[Item], start: float, loop: asyncio.AbstractEventLoop) -> None:
    while any(item.fired_at is None for item in items):
        await asyncio.sleep(0.02)
        assert loop.time() - start < 2, "an item that should have fired did not"


async def test_items_fire_after_their_deadline_and_moved_deadlines_are_honoured() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    early, late, moved, dropped = (Item(loop, start + d) for d in (0.1, 0.3, 0.1, 0.1))
    for item in (early, late, moved, dropped):
        wheel.add(item, item.deadline)
    moved.deadline = start + 0.4  # activity moved it; the wheel learns when it comes due
    wheel.discard(dropped)
    await wait_fired([late, moved], start, loop)
    assert early.fired_at is not None and early.fired_at >= early.deadline
    assert late.fired_at is not None and late.fired_at >= late.deadline
    assert moved.fired_at is not None and moved.fired_at >= start + 0.4
    assert dropped.fired_at is None
    assert len(wheel) == 0
    wheel.close()


async def test_removed_items_never_fire_and_those_moved_into_their_place_still_do() -> None:
    """Discarding the first, a middle and the last member of one slot, and an item that
    a swap had already moved: each one left never fires, every other one does."""
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    items = [Item(loop, start + 0.1) for _ in range(6)]
    for item in items:
        wheel.add(item, item.deadline)
    assert len({item.wheel_slot for item in items}) == 1
    removed = [items[0], items[2], items[5], items[4]]  # items[5] took items[0]'s place
    for item in removed:
        wheel.discard(item)
        assert item.wheel_slot == NOT_FILED
        wheel.discard(item)  # twice: a no-op
    kept = [item for item in items if item not in removed]
    members = wheel.slots[kept[0].wheel_slot]
    assert sorted(map(id, members)) == sorted(map(id, kept))
    assert all(members[item.wheel_index] is item for item in kept)
    assert len(wheel) == len(kept)
    await wait_fired(kept, start, loop)
    assert all(item.fired_at is None for item in removed)
    assert len(wheel) == 0
    wheel.close()


async def test_an_item_discarded_while_its_slot_fires_does_not_fire() -> None:
    """One connection's deadline may end another's (same slot): the other is not run."""
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    first, second = Item(loop, start + 0.1), Item(loop, start + 0.1)

    def first_due(now: float) -> float | None:
        wheel.discard(second)
        first.fired_at = now
        return None

    first.deadline_due = first_due  # type: ignore[method-assign]
    wheel.add(first, first.deadline)
    wheel.add(second, second.deadline)
    await wait_fired([first], start, loop)
    assert second.fired_at is None
    assert len(wheel) == 0
    wheel.close()


async def test_ensure_files_earlier_deadlines_and_leaves_later_ones_to_the_due_slot() -> None:
    """ensure() moves an item only to an earlier slot; a later deadline waits for the slot
    the item is filed under, whose deadline_due files it again: it still fires on time."""
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    later, earlier = Item(loop, start + 0.1), Item(loop, start + 0.4)
    for item in (later, earlier):
        wheel.add(item, item.deadline)
    slots = later.wheel_slot, earlier.wheel_slot
    later.deadline = start + 0.3
    wheel.ensure(later, later.deadline)
    earlier.deadline = start + 0.15
    wheel.ensure(earlier, earlier.deadline)
    assert later.wheel_slot == slots[0]  # not moved: its old slot comes first
    assert earlier.wheel_slot < slots[1]  # moved forward
    unfiled = Item(loop, start + 0.2)
    wheel.ensure(unfiled, unfiled.deadline)
    assert unfiled.wheel_slot != NOT_FILED
    await wait_fired([later, earlier, unfiled], start, loop)
    assert later.fired_at is not None and later.fired_at >= start + 0.3
    assert earlier.fired_at is not None and start + 0.15 <= earlier.fired_at < start + 0.4
    assert unfiled.fired_at is not None and unfiled.fired_at >= start + 0.2
    assert len(wheel) == 0
    wheel.close()


class Refiling(Item):
    """Files itself again for `later` seconds on from its first due slot."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, later: float) -> None:
        super().__init__(loop, deadline)
        self.later = later

    def deadline_due(self, now: float) -> float | None:
        if self.fired_at is None:
            self.fired_at = now
            return now + self.later
        return None


async def test_an_item_filed_again_later_does_not_delay_an_earlier_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A callback that files its item for much later (a tunnel's first slot re-filed at its
    idle deadline) must not leave the wheel armed past an earlier slot (a 408 due soon);
    and the tick logs no error (compiled, a narrowed attribute read raised TypeError)."""
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    refiling = Refiling(loop, start + 0.1, later=30.0)
    soon = Item(loop, start + 0.3)
    wheel.add(refiling, refiling.deadline)
    wheel.add(soon, soon.deadline)
    with caplog.at_level(logging.ERROR):
        await wait_fired([refiling, soon], start, loop)
    assert soon.fired_at is not None and soon.fired_at < start + 0.3 + 0.2
    assert refiling.wheel_slot != NOT_FILED  # filed again, for later
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    wheel.close()


class FakeLoop:
    """A clock set by hand, and timers that never run by themselves."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Any) -> Any:
        return types.SimpleNamespace(cancel=lambda: None)


def test_a_deadline_in_the_slot_being_fired_is_filed_after_it() -> None:
    """A deadline one float step after the moment its slot fires (1.6 + 0.1 =
    1.7000000000000002, in slot 34 like 1.7; uvloop's clock is whole milliseconds): the
    item returns it, still ahead of now, and it must be filed for a later slot, not
    popped again by the same tick forever."""
    loop = FakeLoop()
    wheel = DeadlineWheel(cast(asyncio.AbstractEventLoop, loop), resolution=0.05)
    calls = 0

    class Counted(Item):
        def deadline_due(self, now: float) -> float | None:
            nonlocal calls
            calls += 1
            if calls > 100:
                raise RuntimeError("fired again and again in one tick")
            return super().deadline_due(now)

    deadline = 1.6 + 0.1
    item = Counted(cast(asyncio.AbstractEventLoop, loop), deadline)
    wheel.add(item, deadline)
    loop.now = 1.7
    wheel._tick()
    assert calls == 1
    assert item.fired_at is None and item.wheel_slot != NOT_FILED
    loop.now = 1.75
    wheel._tick()
    assert item.fired_at == 1.75
