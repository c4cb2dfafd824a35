"""Active health checks of one backend group's endpoints.

This module owns the probes (a real WebSocket upgrade, an HTTP GET, a TCP connect),
their schedule and the threshold logic that turns probe results into healthy/unhealthy
flips. One task per endpoint, never per connection.

It must not touch live connections or scheduler state: it reports flips through
`on_change(key, healthy)` and the proxy sets `EndpointState.healthy`, so an unhealthy
endpoint gets no new connections while its live ones stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from websockets.asyncio.client import connect

from lbwire.snapshot import Endpoint, HealthCheck, HealthCheckType

log = logging.getLogger("wslb.health")

USER_AGENT = "wslb-health-check"

INTERVAL_JITTER = 0.1
"""Each wait is the interval ±10 %, so checks of many endpoints (and of many data-plane
replicas) drift apart instead of hitting a backend in lockstep."""

FIRST_CHECK_SPREAD_SECONDS = 1.0
"""The first probe of a new endpoint comes within this (or the interval if shorter):
soon enough to catch a dead endpoint early, spread enough that a config with hundreds
of endpoints does not open hundreds of connections in the same millisecond."""

MAX_STATUS_LINE = 8192


def host_for_url(address: str) -> str:
    """IPv6 literals need brackets in URLs and Host headers."""
    return f"[{address}]" if ":" in address else address


async def probe(policy: HealthCheck, address: str, port: int) -> str | None:
    """Run one check; None when healthy, else why not. Bounded by the policy's
    timeout; never raises (except cancellation)."""
    try:
        async with asyncio.timeout(policy.timeout_seconds):
            if policy.type is HealthCheckType.WEBSOCKET:
                return await _probe_websocket(policy, address, port)
            if policy.type is HealthCheckType.HTTP:
                return await _probe_http(policy, address, port)
            if policy.type is HealthCheckType.TCP:
                return await _probe_tcp(address, port)
            return None
    except TimeoutError:
        return f"no answer within {policy.timeout_seconds:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


async def _probe_websocket(policy: HealthCheck, address: str, port: int) -> str | None:
    uri = f"ws://{host_for_url(address)}:{port}{policy.path}"
    async with connect(
        uri,
        open_timeout=policy.timeout_seconds,
        close_timeout=policy.timeout_seconds,
        ping_interval=None,
        compression=None,
        proxy=None,  # a health check must reach the endpoint itself, never $HTTP_PROXY
        user_agent_header=USER_AGENT,
        max_size=64 * 1024,
    ):
        pass  # leaving the block performs the clean close handshake
    return None


async def _probe_http(policy: HealthCheck, address: str, port: int) -> str | None:
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in policy.path):
        return "path contains spaces or control characters"
    reader, writer = await asyncio.open_connection(address, port, limit=MAX_STATUS_LINE)
    try:
        request = (
            f"GET {policy.path} HTTP/1.1\r\n"
            f"Host: {host_for_url(address)}:{port}\r\n"
            f"User-Agent: {USER_AGENT}\r\n"
            "Accept: */*\r\n"
            "Connection: close\r\n\r\n"
        )
        writer.write(request.encode("latin-1"))
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not _is_status(parts[1]):
        return f"not an HTTP/1.x answer: {status_line[:80]!r}"
    status = int(parts[1])
    if status not in policy.expected_statuses:
        return f"status {status}, expected one of {policy.expected_statuses}"
    return None


def _is_status(text: bytes) -> bool:
    return len(text.strip()) == 3 and text.strip().isdigit()


async def _probe_tcp(address: str, port: int) -> str | None:
    _, writer = await asyncio.open_connection(address, port)
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return None


@dataclass
class _EndpointHealth:
    endpoint: Endpoint
    healthy: bool = True
    successes: int = 0
    failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class HealthChecker:
    """One per backend group; a task per endpoint (not per connection).

    Endpoints start healthy; `unhealthyThreshold` consecutive failures flip one to
    unhealthy and `healthyThreshold` consecutive successes flip it back. `on_change`
    is called only on flips. Methods other than `close` are synchronous and must be
    called from the event loop's thread.
    """

    def __init__(
        self,
        policy: HealthCheck,
        on_change: Callable[[str, bool], None],
        *,
        name: str,
    ) -> None:
        self._policy = policy
        self._on_change = on_change
        self._name = name
        self._endpoints: dict[str, _EndpointHealth] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def policy(self) -> HealthCheck:
        return self._policy

    def update(self, endpoints: Iterable[Endpoint]) -> None:
        """Check exactly these endpoints: start tasks for new keys, cancel tasks of
        removed keys. Known keys keep their health and counters."""
        wanted = {endpoint.key: endpoint for endpoint in endpoints}
        for key in list(self._endpoints):
            if key not in wanted:
                self._stop(self._endpoints.pop(key))
        for key, endpoint in wanted.items():
            health = self._endpoints.get(key)
            if health is None:
                health = self._endpoints[key] = _EndpointHealth(endpoint)
                self._start(health)
            else:
                health.endpoint = endpoint

    def set_policy(self, policy: HealthCheck) -> None:
        """Switch to a new policy on a config swap without forgetting who is unhealthy
        (a new checker would start everyone healthy). Policy `none` marks every
        endpoint healthy again."""
        if policy == self._policy:
            return
        self._policy = policy
        for health in self._endpoints.values():
            self._stop(health)
            health.successes = health.failures = 0
            if policy.type is HealthCheckType.NONE and not health.healthy:
                self._flip(health, True, "health checks turned off")
            self._start(health)

    def is_healthy(self, key: str) -> bool:
        """Unknown keys and policy `none` count as healthy."""
        health = self._endpoints.get(key)
        return health is None or health.healthy

    def statuses(self) -> Mapping[str, bool]:
        """Health of every checked endpoint, e.g. for a metrics gauge."""
        return {key: health.healthy for key, health in self._endpoints.items()}

    async def close(self) -> None:
        """Cancel every check and wait for the tasks to end."""
        self._closed = True
        for health in self._endpoints.values():
            self._stop(health)
        tasks = list(self._stopping)
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- tasks ------------------------------------------------------------------------

    def _start(self, health: _EndpointHealth) -> None:
        if self._closed or self._policy.type is HealthCheckType.NONE:
            return
        health.task = asyncio.get_running_loop().create_task(
            self._watch(health, self._policy),
            name=f"health {self._name} {health.endpoint.key}",
        )

    def _stop(self, health: _EndpointHealth) -> None:
        task, health.task = health.task, None
        if task is not None:
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    async def _watch(self, health: _EndpointHealth, policy: HealthCheck) -> None:
        loop = asyncio.get_running_loop()
        interval = policy.interval_seconds
        await asyncio.sleep(random.uniform(0, min(interval, FIRST_CHECK_SPREAD_SECONDS)))
        while True:
            started = loop.time()
            try:
                endpoint = health.endpoint
                failure = await probe(policy, endpoint.address, endpoint.port)
                self._record(health, policy, failure)
            except Exception:
                # A bug here must not silently end checking of this endpoint.
                log.exception("%s: health check of %s failed", self._name, health.endpoint.key)
            jitter = random.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)
            await asyncio.sleep(max(0.0, started + interval * jitter - loop.time()))

    def _record(self, health: _EndpointHealth, policy: HealthCheck, failure: str | None) -> None:
        if failure is None:
            health.failures = 0
            health.successes += 1
            if not health.healthy and health.successes >= policy.healthy_threshold:
                self._flip(health, True, f"{health.successes} consecutive successful checks")
            return
        log.debug(
            "%s: %s check of %s failed: %s",
            self._name,
            policy.type.value,
            health.endpoint.key,
            failure,
        )
        health.successes = 0
        health.failures += 1
        if health.healthy and health.failures >= policy.unhealthy_threshold:
            self._flip(health, False, f"{health.failures} consecutive failures, last: {failure}")

    def _flip(self, health: _EndpointHealth, healthy: bool, why: str) -> None:
        health.healthy = healthy
        key = health.endpoint.key
        log.info(
            "%s: endpoint %s is now %s (%s)",
            self._name,
            key,
            "healthy" if healthy else "unhealthy",
            why,
        )
        try:
            self._on_change(key, healthy)
        except Exception:
            log.exception("%s: health change callback failed for %s", self._name, key)
