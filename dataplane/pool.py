"""Idle backend connections kept for reuse, per endpoint: bookkeeping only.

Sans-I/O: connections are opaque objects and the time is passed in; the pool never
closes anything itself, it hands back what the caller must close (evicted, expired or
dropped connections). Only a connection whose response was read to its end may be put
back (`http1.ResponseReader.reusable`); the pool trusts its caller on that.

Within an endpoint the most recently returned connection is taken first: it is the one
least likely to have been closed by the backend, and the others age out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PoolSettings:
    max_idle_per_endpoint: int = 16
    """Idle connections kept per endpoint; past it the oldest is closed. Enough to absorb
    a burst's worth of keep-alive reuse without holding backend slots for nothing."""
    max_idle_age: float = 4.0
    """Seconds an idle connection may wait for reuse. Below Node.js's 5 s keep-alive
    timeout, the shortest common backend default: reusing a connection the backend is
    closing at that instant fails the request."""


class Pool(Generic[T]):
    """Idle connections per endpoint (any hashable key, e.g. (address, port))."""

    __slots__ = ("_idle", "settings")

    def __init__(self, settings: PoolSettings | None = None) -> None:
        self.settings = settings or PoolSettings()
        # per endpoint: (expiry time, connection), in the order they were put back
        self._idle: dict[Hashable, deque[tuple[float, T]]] = {}

    def __len__(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def idle(self, endpoint: Hashable) -> int:
        """Idle connections held for one endpoint (expired ones included until evicted)."""
        idle = self._idle.get(endpoint)
        return len(idle) if idle else 0

    def put(self, endpoint: Hashable, conn: T, now: float, ttl: float | None = None) -> list[T]:
        """Keep `conn` for reuse; `ttl` shortens its stay (a backend's `Keep-Alive:
        timeout=`). Returns the connections to close: `conn` itself when nothing may be
        kept, or the oldest idle one pushed out."""
        age = self.settings.max_idle_age if ttl is None else min(ttl, self.settings.max_idle_age)
        if self.settings.max_idle_per_endpoint <= 0 or age <= 0:
            return [conn]
        idle = self._idle.get(endpoint)
        if idle is None:
            idle = self._idle[endpoint] = deque()
        idle.append((now + age, conn))
        closed = []
        while len(idle) > self.settings.max_idle_per_endpoint:
            closed.append(idle.popleft()[1])
        return closed

    def take(self, endpoint: Hashable, now: float) -> T | None:
        """The freshest idle connection to `endpoint` still within its age, or None.
        Expired ones stay until `evict_idle` hands them over for closing."""
        idle = self._idle.get(endpoint)
        if not idle:
            return None
        # newest first; a backend's shorter ttl means expiries are not in order
        for i in range(len(idle) - 1, -1, -1):
            expiry, conn = idle[i]
            if expiry > now:
                del idle[i]
                if not idle:
                    del self._idle[endpoint]
                return conn
        return None

    def discard(self, endpoint: Hashable, conn: T) -> bool:
        """Forget an idle connection the backend closed; False if it was not held."""
        idle = self._idle.get(endpoint)
        if not idle:
            return False
        for item in idle:
            if item[1] is conn:
                idle.remove(item)
                if not idle:
                    del self._idle[endpoint]
                return True
        return False

    def evict_idle(self, now: float) -> list[T]:
        """Remove and return every connection past its age (call from a periodic timer)."""
        closed: list[T] = []
        for endpoint in list(self._idle):
            idle = self._idle[endpoint]
            if min(expiry for expiry, _ in idle) > now:
                continue
            closed.extend(conn for expiry, conn in idle if expiry <= now)
            kept = [item for item in idle if item[0] > now]
            if kept:
                self._idle[endpoint] = deque(kept)
            else:
                del self._idle[endpoint]
        return closed

    def drop_endpoint(self, endpoint: Hashable) -> list[T]:
        """Remove and return all idle connections to an endpoint that left the config."""
        idle = self._idle.pop(endpoint, None)
        return [conn for _, conn in idle] if idle else []

    def next_expiry(self) -> float | None:
        """When `evict_idle` next has something to do (None: nothing idle)."""
        return min((expiry for idle in self._idle.values() for expiry, _ in idle), default=None)
