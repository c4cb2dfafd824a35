"""One backend group of a listener at run time: its endpoints and what chooses among them.

A listener has a default group (its own `backends`) and one per forwarding rule. A
`BackendGroup` holds what a listener held for its single backend set before rules
existed: the endpoint states, the scheduler, the sticky cookie codec, the health checker,
the WebSocket timers (the rule's, else the listener's) and the drain timeout; plus the
pool of idle HTTP backend connections to its endpoints. `apply()` takes a new config in
place, keeping endpoint states, health and pooled connections of endpoints that stay.

It must not route requests (routing.py) or touch client connections (listener.py drains
them; tunnel.py and http_proxy.py use a group through its methods).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Protocol

from dataplane.balancer import Balancer, EndpointState, RequestInfo
from dataplane.health import HealthChecker
from dataplane.pool import Pool
from dataplane.relay import RelaySettings
from dataplane.sticky import StickyCookies
from lbwire.snapshot import Backends, Listener, StickyMode
from lbwire.snapshot import Protocol as ListenerProtocol
from lbwire.snapshot import Rule as RuleConfig

DEFAULT = "default"


class Pooled(Protocol):
    """An idle backend connection as the pool's owner sees it."""

    def abandon(self) -> None: ...


def relay_settings(config: Listener, rule: RuleConfig | None) -> RelaySettings:
    """A group's WebSocket timers: the rule's where it sets them, else the listener's."""
    keepalive = config.keepalive
    idle = config.idle_timeout_seconds
    max_message = config.limits.max_message_bytes
    if rule is not None:
        keepalive = rule.keepalive or keepalive
        idle = rule.idle_timeout_seconds or idle
        max_message = rule.max_message_bytes or max_message
    return RelaySettings(
        max_message=max_message,
        idle_timeout=idle,
        keepalive_interval=keepalive.interval_seconds if keepalive.enabled else 0.0,
        keepalive_timeout=keepalive.timeout_seconds if keepalive.enabled else 0.0,
    )


class BackendGroup:
    """Endpoints, scheduler, sticky cookies, health and pooled connections of one group."""

    def __init__(
        self,
        name: str,
        listener: str,
        on_health: Callable[[BackendGroup, EndpointState], None],
    ) -> None:
        self.name = name  # "default" or the rule's name: also the metrics' rule label
        self._listener = listener
        self._on_health = on_health
        self.endpoints: dict[str, EndpointState] = {}
        self.health: HealthChecker | None = None
        self.pool: Pool[Pooled] = Pool()
        self._pool_timer: asyncio.TimerHandle | None = None
        self.closed = False

    def apply(self, config: Listener, rule: RuleConfig | None) -> list[EndpointState]:
        """Take this group's config from a snapshot; return the endpoint states that left."""
        backends: Backends = config.backends if rule is None else rule.backends
        self.relay_settings = relay_settings(config, rule)
        drain = rule.drain_timeout_seconds if rule is not None else None
        self.drain_timeout = config.drain_timeout_seconds if drain is None else drain
        fresh: dict[str, EndpointState] = {}
        for endpoint in backends.endpoints:
            state = self.endpoints.get(endpoint.key)
            if state is None:
                state = EndpointState.from_endpoint(endpoint)
            else:
                state.apply(endpoint)
            fresh[endpoint.key] = state
        removed = [state for key, state in self.endpoints.items() if key not in fresh]
        for state in removed:
            for conn in self.pool.drop_endpoint(state.key):
                conn.abandon()
        self.endpoints = fresh
        self.sticky = StickyCookies(
            backends.sticky,
            secure=config.protocol is ListenerProtocol.HTTPS,
            endpoint_keys=self.endpoints,
        )
        self.sticky_rewrites_response = backends.sticky.mode is not StickyMode.NONE
        self.sticky_enabled = self.sticky.enabled
        self.balancer = Balancer(backends, self.endpoints)
        # One checker across swaps so a dead endpoint does not look healthy again.
        if self.health is None:
            self.health = HealthChecker(
                backends.health_check, self._health_changed, name=f"{self._listener}/{self.name}"
            )
        else:
            self.health.set_policy(backends.health_check)
        self.health.update(backends.endpoints)
        for state in self.endpoints.values():
            state.healthy = self.health.is_healthy(state.key)
        return removed

    def _health_changed(self, key: str, healthy: bool) -> None:
        state = self.endpoints.get(key)
        if state is not None:
            state.healthy = healthy
            self._on_health(self, state)

    # ------------------------------------------------------------------ choosing

    def choose(
        self, request: RequestInfo, tried: Collection[str], sticky_key: str | None
    ) -> EndpointState | None:
        """The sticky endpoint when it is eligible and untried, else the scheduler's pick."""
        if sticky_key is not None and sticky_key not in tried:
            state = self.endpoints.get(sticky_key)
            if state is not None and state.eligible:
                return state
        return self.balancer.pick(request, tried)

    def should_drain(self, endpoint: EndpointState) -> bool:
        """A connection to `endpoint` must drain: it drains, or left this group."""
        return endpoint.draining or self.endpoints.get(endpoint.key) is not endpoint

    # ------------------------------------------------------------------ pool

    def take_idle(self, endpoint: EndpointState, now: float) -> Pooled | None:
        return self.pool.take(endpoint.key, now)

    def put_idle(
        self,
        endpoint: EndpointState,
        conn: Pooled,
        ttl: float | None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> bool:
        """Keep `conn` for reuse; False when it was closed instead (pool full, group gone,
        endpoint left or draining). Pass the `loop` where it is at hand: finding the
        running one costs a getpid() per call on CPython 3.11."""
        if self.closed or self.should_drain(endpoint):
            conn.abandon()
            return False
        if loop is None:
            loop = asyncio.get_running_loop()
        closed = self.pool.put(endpoint.key, conn, loop.time(), ttl)
        for item in closed:
            item.abandon()
        if self._pool_timer is None:
            self._arm_pool_timer(loop)
        return conn not in closed

    def forget_idle(self, endpoint: EndpointState, conn: Pooled) -> None:
        """An idle connection closed or misbehaved: drop it from the pool."""
        self.pool.discard(endpoint.key, conn)

    def _arm_pool_timer(self, loop: asyncio.AbstractEventLoop) -> None:
        expiry = self.pool.next_expiry()
        if expiry is not None and not self.closed:
            self._pool_timer = loop.call_at(expiry + 0.01, self._evict)

    def _evict(self) -> None:
        self._pool_timer = None
        loop = asyncio.get_running_loop()
        for conn in self.pool.evict_idle(loop.time()):
            conn.abandon()
        self._arm_pool_timer(loop)

    async def close(self) -> None:
        """The group left the config or its listener closes: idle connections and
        health checks end (live connections drain separately)."""
        self.closed = True
        if self._pool_timer is not None:
            self._pool_timer.cancel()
            self._pool_timer = None
        for key in list(self.endpoints):
            for conn in self.pool.drop_endpoint(key):
                conn.abandon()
        if self.health is not None:
            await self.health.close()
