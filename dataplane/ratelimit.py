"""Rate limiting of new connections: a token bucket.

This module owns the arithmetic only. It is pure: the caller passes the time (a
monotonic clock), so it must not read a clock or sleep, and it must not decide what a
refusal looks like on the wire (the proxy answers 503 with Retry-After).
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; one token per new connection.

    The bucket starts full, so a fresh listener admits a burst at once. `burst`
    defaults to one second's worth (at least 1, or a rate below 1/s could never admit).
    """

    def __init__(self, rate: float, burst: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        capacity = max(rate, 1.0) if burst is None else burst
        if capacity < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self.burst = capacity
        self._tokens = capacity
        self._updated: float | None = None

    def _refill(self, now: float) -> None:
        if self._updated is not None:
            # A clock that goes backwards (it should not) must not drain the bucket.
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._updated = now if self._updated is None else max(now, self._updated)

    def take(self, now: float) -> bool:
        """Spend one token if there is one."""
        self._refill(now)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def retry_after(self, now: float) -> float:
        """Seconds until `take` would succeed (0 when it would now)."""
        self._refill(now)
        return max(0.0, (1 - self._tokens) / self.rate)
