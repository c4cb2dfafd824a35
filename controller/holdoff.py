"""The debounce clock of the rebuild loop, pure and with an injectable clock.

This module owns one rule: after a change, wait until `holdoff` seconds pass with no
further change, but never longer than `max_delay` after the first change not yet built,
so a burst (a rollout moving many endpoints) becomes one build and an endless stream of
changes still builds at a bounded rate. It does not sleep or know what is being built:
the reconciler asks `delay()` and sleeps itself. Unit tests drive it with a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Holdoff:
    def __init__(
        self, holdoff: float, max_delay: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.holdoff = holdoff
        self.max_delay = max_delay
        self.clock = clock
        self._first: float | None = None  # the first change since the last build
        self._last = 0.0

    def mark(self) -> None:
        """A change arrived now."""
        now = self.clock()
        if self._first is None:
            self._first = now
        self._last = now

    @property
    def pending(self) -> bool:
        return self._first is not None

    def delay(self) -> float:
        """Seconds until a build is due (0 when due now or when nothing is pending)."""
        if self._first is None:
            return 0.0
        deadline = min(self._last + self.holdoff, self._first + self.max_delay)
        return max(0.0, deadline - self.clock())

    def fired(self) -> None:
        """A build starts: changes from now on wait for the next one."""
        self._first = None
