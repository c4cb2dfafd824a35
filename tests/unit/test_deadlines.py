"""The deadline wheel fires each item at (or just after) its own deadline, moves it when
the deadline moved, and forgets discarded items."""

from __future__ import annotations

import asyncio

from dataplane.deadlines import DeadlineWheel


class Item:
    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self.wheel_slot: int | None = None
        self.deadline = deadline
        self.fired_at: float | None = None
        self.loop = loop

    def deadline_due(self, now: float) -> float | None:
        if self.deadline > now:
            return self.deadline
        self.fired_at = now
        return None


async def test_items_fire_after_their_deadline_and_moved_deadlines_are_honoured() -> None:
    loop = asyncio.get_running_loop()
    wheel = DeadlineWheel(loop, resolution=0.05)
    start = loop.time()
    early, late, moved, dropped = (Item(loop, start + d) for d in (0.1, 0.3, 0.1, 0.1))
    for item in (early, late, moved, dropped):
        wheel.add(item, item.deadline)
    moved.deadline = start + 0.4  # activity moved it; the wheel learns when it comes due
    wheel.discard(dropped)
    while late.fired_at is None or moved.fired_at is None:
        await asyncio.sleep(0.02)
        assert loop.time() - start < 2
    assert early.fired_at is not None and early.fired_at >= early.deadline
    assert late.fired_at >= late.deadline
    assert moved.fired_at >= start + 0.4
    assert dropped.fired_at is None
    assert len(wheel) == 0
    wheel.close()
