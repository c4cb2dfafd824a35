"""Admission: whether a new connection may go on, decided before any backend is involved.

Owns the load balancer's capacity (its spec tier, shared by all listeners) and one
listener's gate: the source-address ACL, its connection and rate limits, and the
allowed Origins. It answers with a `Rejection` that carries its status, text and metric
label; it must not touch sockets, metrics or backends.
"""

from __future__ import annotations

import math

from dataplane.policy import OriginPolicy, SourceFilter
from dataplane.ratelimit import TokenBucket
from dataplane.rejection import Rejection
from lbwire.snapshot import Listener, LoadBalancerLimits

ORIGIN_REFUSED = Rejection(403, "Origin not allowed", label="origin")


def share(total: int, workers: int, index: int) -> int:
    """Worker `index`'s part of a limit: the parts add up to `total` (the first workers
    take the remainder), each at least 1 so no worker refuses everything."""
    base, extra = divmod(total, max(1, workers))
    return max(1, base + (1 if index < extra else 0))


class Capacity:
    """The load balancer's own limits (its spec tier), shared by all its listeners.

    With several worker processes each enforces its share: the kernel spreads new
    connections evenly across SO_REUSEPORT sockets, so per-worker shares add up. The
    listeners' limits are split the same way (`Gate`), by this worker's `index`.
    """

    def __init__(self, limits: LoadBalancerLimits, workers: int = 1, index: int = 0) -> None:
        self.active = 0
        self.workers = max(1, workers)
        self.index = index
        self.rate = 0.0
        self.update(limits)

    def update(self, limits: LoadBalancerLimits) -> None:
        self.max_connections = share(limits.max_connections, self.workers, self.index)
        rate = limits.new_connections_per_second / self.workers
        if rate != self.rate:
            # Only a changed rate gets a fresh bucket: a swap must not refill the burst.
            self.rate = rate
            self.bucket = TokenBucket(rate)


class Gate:
    """One listener's admission rules, rebuilt on every config swap (the rate bucket is
    kept while the rate stays the same, so a swap never refills the burst)."""

    def __init__(self, config: Listener, capacity: Capacity, previous: Gate | None) -> None:
        self.capacity = capacity
        self.acl = SourceFilter(config.source_ranges)
        self.origins = OriginPolicy(config.allowed_origins)
        # Each worker's part of the listener's limits, as for the load balancer's.
        workers, index = capacity.workers, capacity.index
        self.max_connections = share(config.limits.max_connections, workers, index)
        rate = share(config.limits.new_connections_per_second, workers, index)
        self.rate: float = float(rate)
        self.bucket: TokenBucket = (
            previous.bucket if previous is not None and previous.rate == rate else TokenBucket(rate)
        )

    def check(self, client_ip: str, open_here: int, now: float) -> Rejection | None:
        """Why a connection just accepted (already counted in `open_here` and in the
        capacity) must be refused, or None."""
        if self.acl.restricts and not self.acl.allows(client_ip):
            return Rejection(403, "Source address not allowed", label="source_denied")
        if open_here > self.max_connections:
            return busy("Too many connections on this listener", label="listener_connections")
        capacity = self.capacity
        if capacity.active > capacity.max_connections:
            return busy("Too many connections on this load balancer", label="lb_connections")
        if not self.bucket.take(now):
            retry = self.bucket.retry_after(now)
            return busy("Too many new connections", label="listener_rate", retry_after=retry)
        if not capacity.bucket.take(now):
            retry = capacity.bucket.retry_after(now)
            return busy("Too many new connections", label="lb_rate", retry_after=retry)
        return None

    def origin(self, values: list[str]) -> Rejection | None:
        """One Origin header at most, and an allowed one (or none, when that is allowed)."""
        origin = values[0] if len(values) == 1 else None
        if len(values) > 1 or not self.origins.allows(origin):
            return ORIGIN_REFUSED
        return None


def busy(text: str, *, label: str, retry_after: float = 1.0) -> Rejection:
    seconds = max(1, math.ceil(retry_after))
    return Rejection(503, text, [("Retry-After", str(seconds))], label=label)
