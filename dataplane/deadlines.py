"""Every connection deadline (idle, keepalive, drain, close) on one timer: a timing wheel.

A loop TimerHandle per connection costs about 600 bytes, more than the rest of an idle
connection's Python state; a slot in a shared bucket costs a few dozen. Each connection
still has its own movable deadline (last activity + idle timeout): frames only update a
float, and the wheel looks at a connection when its bucket comes due, then either fires
or files it again under the moved deadline. Resolution is 50 ms: keepalive promises a
1011 within interval + timeout + 0.2 s, and a slot costs nothing while it is empty.
"""

from __future__ import annotations

import asyncio
import heapq
import math
from collections.abc import Callable
from typing import Final, Protocol

RESOLUTION: Final = 0.05


class Expiring(Protocol):
    wheel_slot: int | None

    def deadline_due(self, now: float) -> float | None:
        """Called when the slot comes due: a new deadline to file, or None when done."""


class DeadlineWheel:
    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = RESOLUTION) -> None:
        self.loop = loop
        self.resolution = resolution
        self.slots: dict[int, set[Expiring]] = {}
        self.due: list[int] = []  # heap of slot numbers with members
        self.timer: asyncio.TimerHandle | None = None
        self.timer_slot: int | None = None

    def __len__(self) -> int:
        return sum(len(members) for members in self.slots.values())

    def add(self, item: Expiring, when: float) -> None:
        """File `item` under the slot of `when` (moving it if it was filed already)."""
        self.discard(item)
        slot = math.ceil(when / self.resolution)
        members = self.slots.get(slot)
        if members is None:
            members = self.slots[slot] = set()
            heapq.heappush(self.due, slot)
        members.add(item)
        item.wheel_slot = slot
        if self.timer_slot is None or slot < self.timer_slot:
            self._arm(slot)

    def discard(self, item: Expiring) -> None:
        slot = item.wheel_slot
        if slot is None:
            return
        item.wheel_slot = None
        members = self.slots.get(slot)
        if members is not None:
            members.discard(item)

    def _arm(self, slot: int) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_slot = slot
        self.timer = self.loop.call_at(slot * self.resolution, self._tick)

    def _tick(self) -> None:
        self.timer = None
        self.timer_slot = None
        now = self.loop.time()
        current = math.floor(now / self.resolution)
        while self.due and self.due[0] <= current:
            slot = heapq.heappop(self.due)
            members = self.slots.pop(slot, None)
            for item in list(members or ()):
                item.wheel_slot = None
                later = _safe_due(item.deadline_due, now)
                if later is not None:
                    self.add(item, later)
        while self.due and not self.slots.get(self.due[0]):
            self.slots.pop(heapq.heappop(self.due), None)  # emptied by discards
        if self.due and self.timer is None:
            self._arm(self.due[0])

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _safe_due(callback: Callable[[float], float | None], now: float) -> float | None:
    try:
        return callback(now)
    except Exception:  # one connection's bug must not stop every other deadline
        import logging

        logging.getLogger("wslb.deadlines").exception("idle deadline callback failed")
        return None
