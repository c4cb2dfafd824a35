"""Admission before the upgrade: connection limits, rate limits, source ACL and Origins.

Every refusal comes before the upgrade (the client sees an HTTP status, never a 101)
and is counted in `wslb_dataplane_rejections_total` with its reason.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import free_port, listener, snapshot, url, wait_until

pytestmark = pytest.mark.integration


def rejections(runtime: Runtime, reason: str, name: str = "ws") -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_rejections_total", {"listener": name, "reason": reason}
    )
    return value or 0.0


def active(runtime: Runtime, name: str = "ws") -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_connections_active", {"listener": name}
    )
    return value or 0.0


async def refused(uri: str, **kwargs: Any) -> InvalidStatus:
    """Open `uri` expecting an HTTP refusal instead of a 101; return it."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(uri, **kwargs):
            pass
    return caught.value


async def echoes(uri: str, **kwargs: Any) -> None:
    async with connect(uri, **kwargs) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"


async def hold(stack: AsyncExitStack, uri: str) -> ClientConnection:
    ws = await stack.enter_async_context(connect(uri))
    await ws.send("hello")
    assert await ws.recv() == "hello"
    return ws


async def test_third_concurrent_connection_gets_503_then_one_fits_after_a_close(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = listener(backends={"endpoints": [backend.endpoint]}, limits={"maxConnections": 2})
    runtime = await dataplane(snapshot(config))
    async with AsyncExitStack() as stack:
        first = await hold(stack, url(runtime))
        await hold(stack, url(runtime))

        exc = await refused(url(runtime))
        assert exc.response.status_code == 503
        assert int(exc.response.headers["Retry-After"]) >= 1
        assert exc.response.body
        assert len(backend.server.connections) == 2
        assert rejections(runtime, "listener_connections") == 1

        await first.close()
        await wait_until(lambda: active(runtime) == 1)
        await echoes(url(runtime))
    assert rejections(runtime, "listener_connections") == 1


async def test_fourth_new_connection_within_a_second_gets_503_with_retry_after(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]}, limits={"newConnectionsPerSecond": 3}
    )
    runtime = await dataplane(snapshot(config))
    for _ in range(3):
        await echoes(url(runtime))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 503
    assert exc.response.headers["Retry-After"] == "1"
    assert rejections(runtime, "listener_rate") == 1
    assert rejections(runtime, "listener_connections") == 0


async def test_rate_limited_client_gets_in_within_retry_after(
    backends: Any, dataplane: Any
) -> None:
    """Four connections opened at once: exactly one is refused, and retrying it succeeds
    no later than the Retry-After it was given."""
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]}, limits={"newConnectionsPerSecond": 3}
    )
    runtime = await dataplane(snapshot(config))
    loop = asyncio.get_running_loop()

    async def attempt() -> InvalidStatus | None:
        try:
            await echoes(url(runtime))
        except InvalidStatus as exc:
            return exc
        return None

    outcomes = await asyncio.gather(*(attempt() for _ in range(4)))
    refusals = [exc for exc in outcomes if exc is not None]
    assert len(refusals) == 1
    assert refusals[0].response.status_code == 503
    retry_after = int(refusals[0].response.headers["Retry-After"])
    refused_at = loop.time()
    while await attempt() is not None:
        assert loop.time() - refused_at < retry_after + 0.5, "still refused after Retry-After"
        await asyncio.sleep(0.05)
    assert rejections(runtime, "listener_rate") >= 1


async def test_load_balancer_max_connections_counts_every_listener(
    backends: Any, dataplane: Any
) -> None:
    """Two listeners share the load balancer's limit of 2: one connection on each fills it."""
    (backend,) = await backends(1)
    endpoints = {"endpoints": [backend.endpoint]}
    config = snapshot(
        listener("a", backends=endpoints),
        listener("b", backends=endpoints),
        limits={"maxConnections": 2},
    )
    runtime = await dataplane(config)
    async with AsyncExitStack() as stack:
        await hold(stack, url(runtime, "a"))
        held_b = await hold(stack, url(runtime, "b"))

        exc = await refused(url(runtime, "a"))
        assert exc.response.status_code == 503
        assert int(exc.response.headers["Retry-After"]) >= 1
        assert rejections(runtime, "lb_connections", "a") == 1
        assert rejections(runtime, "listener_connections", "a") == 0

        await held_b.close()
        await wait_until(lambda: active(runtime, "a") + active(runtime, "b") == 1)
        await echoes(url(runtime, "a"))


async def test_load_balancer_new_connections_per_second_gets_503_with_retry_after(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(
        listener(backends={"endpoints": [backend.endpoint]}),
        limits={"newConnectionsPerSecond": 2},
    )
    runtime = await dataplane(config)
    await echoes(url(runtime))
    await echoes(url(runtime))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 503
    assert int(exc.response.headers["Retry-After"]) >= 1
    assert rejections(runtime, "lb_rate") == 1


async def test_denied_source_range_gets_403(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]}, sourceRanges={"deny": ["127.0.0.0/8"]}
    )
    runtime = await dataplane(snapshot(config))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 403
    assert exc.response.body
    assert len(backend.server.connections) == 0
    assert rejections(runtime, "source_denied") == 1


async def test_source_outside_the_allow_list_gets_403(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]}, sourceRanges={"allow": ["10.0.0.0/8"]}
    )
    runtime = await dataplane(snapshot(config))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 403
    assert rejections(runtime, "source_denied") == 1


async def test_source_inside_the_allow_list_is_proxied(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        sourceRanges={"allow": ["10.0.0.0/8", "127.0.0.1/32"]},
    )
    runtime = await dataplane(snapshot(config))
    await echoes(url(runtime))
    assert rejections(runtime, "source_denied") == 0


async def test_deny_wins_over_allow_for_the_same_source(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        sourceRanges={"allow": ["127.0.0.0/8"], "deny": ["127.0.0.1/32"]},
    )
    runtime = await dataplane(snapshot(config))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 403


async def test_origin_not_in_allowed_origins_gets_403_and_the_allowed_one_works(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        allowedOrigins=["https://app.example.com"],
    )
    runtime = await dataplane(snapshot(config))
    exc = await refused(url(runtime), origin=Origin("https://evil.example.com"))
    assert exc.response.status_code == 403
    assert exc.response.body
    assert len(backend.server.connections) == 0
    assert rejections(runtime, "origin") == 1

    await echoes(url(runtime), origin=Origin("https://app.example.com"))
    assert rejections(runtime, "origin") == 1


async def test_request_without_origin_gets_403_when_origins_are_listed(
    backends: Any, dataplane: Any
) -> None:
    """Browsers always send Origin on an upgrade; the policy documents refusing its absence."""
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        allowedOrigins=["https://app.example.com"],
    )
    runtime = await dataplane(snapshot(config))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 403
    assert rejections(runtime, "origin") == 1


async def test_rejections_are_counted_per_reason_and_listener(
    backends: Any, dataplane: Any
) -> None:
    """A known pattern of refusals on two listeners gives exactly these counter values."""
    (backend,) = await backends(1)
    endpoints = {"endpoints": [backend.endpoint]}
    config = snapshot(
        listener(
            "guarded",
            backends=endpoints,
            allowedOrigins=["https://app.example.com"],
            limits={"maxConnections": 1},
        ),
        listener("closed", backends=endpoints, sourceRanges={"deny": ["127.0.0.0/8"]}),
    )
    runtime = await dataplane(config)
    for _ in range(2):
        await refused(url(runtime, "guarded"), origin=Origin("https://evil.example.com"))
    for _ in range(3):
        await refused(url(runtime, "closed"))
    await wait_until(lambda: active(runtime, "guarded") == 0)
    async with AsyncExitStack() as stack:
        ws = await stack.enter_async_context(
            connect(url(runtime, "guarded"), origin=Origin("https://app.example.com"))
        )
        await ws.send("x")
        assert await ws.recv() == "x"
        await refused(url(runtime, "guarded"), origin=Origin("https://app.example.com"))

    assert rejections(runtime, "origin", "guarded") == 2
    assert rejections(runtime, "listener_connections", "guarded") == 1
    assert rejections(runtime, "source_denied", "guarded") == 0
    assert rejections(runtime, "source_denied", "closed") == 3
    assert rejections(runtime, "origin", "closed") == 0
    registry = runtime.metrics.registry
    upgrades = {
        code: registry.get_sample_value(
            "wslb_dataplane_upgrades_total", {"listener": "guarded", "code": code}
        )
        for code in ("101", "403", "503")
    }
    assert upgrades == {"101": 1.0, "403": 2.0, "503": 1.0}


async def test_config_reload_keeps_the_listener_rate_limit_spent(
    backends: Any, dataplane: Any
) -> None:
    """A swap that only changes endpoints must not hand out a fresh burst of new connections."""
    one, two = await backends(2)
    port = free_port()

    def config(version: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        limits = {"newConnectionsPerSecond": 2}
        return snapshot(
            listener(port=port, backends={"endpoints": endpoints}, limits=limits), version=version
        )

    runtime = await dataplane(config("1", [one.endpoint]))
    await echoes(url(runtime))
    await echoes(url(runtime))
    await runtime.apply(parse_snapshot(config("2", [one.endpoint, two.endpoint])))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 503
    assert rejections(runtime, "listener_rate") == 1


async def test_config_reload_keeps_the_load_balancer_rate_limit_spent(
    backends: Any, dataplane: Any
) -> None:
    """Same as above at the load-balancer level: endpoint churn must not lift the limit."""
    one, two = await backends(2)
    port = free_port()

    def config(version: str, endpoints: list[dict[str, Any]]) -> dict[str, Any]:
        return snapshot(
            listener(port=port, backends={"endpoints": endpoints}),
            version=version,
            limits={"newConnectionsPerSecond": 2},
        )

    runtime = await dataplane(config("1", [one.endpoint]))
    await echoes(url(runtime))
    await echoes(url(runtime))
    await runtime.apply(parse_snapshot(config("2", [one.endpoint, two.endpoint])))
    exc = await refused(url(runtime))
    assert exc.response.status_code == 503
    assert rejections(runtime, "lb_rate") == 1


@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        ("https://APP.example.com:443", True),
        ("https://eu.apps.example.com", True),
        ("https://apps.example.com", False),
        ("https://app.example.com.evil.com", False),
        ("http://app.example.com", False),
    ],
)
async def test_origin_matching_through_the_proxy(
    backends: Any, dataplane: Any, origin: str, admitted: bool
) -> None:
    """Exact origins compare scheme and host case-insensitively with default ports
    dropped; `*.` entries admit subdomains only."""
    (backend,) = await backends(1)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        allowedOrigins=["https://app.example.com", "https://*.apps.example.com"],
    )
    runtime = await dataplane(snapshot(config))
    if admitted:
        await echoes(url(runtime), origin=Origin(origin))
    else:
        exc = await refused(url(runtime), origin=Origin(origin))
        assert exc.response.status_code == 403
    assert rejections(runtime, "origin") == (0 if admitted else 1)


async def test_ipv6_client_is_matched_against_ipv6_source_ranges(
    backends: Any, dataplane: Any
) -> None:
    """A listener on ::1: an IPv4 allow list refuses the IPv6 client; ::1/128 admits it."""
    (backend,) = await backends(1)
    for allow, admitted in ((["127.0.0.0/8"], False), (["::1/128"], True)):
        config = listener(
            address="::1",
            backends={"endpoints": [backend.endpoint]},
            sourceRanges={"allow": allow},
        )
        runtime = await dataplane(snapshot(config))
        uri = f"ws://[::1]:{runtime.listeners['ws'].config.port}/"
        if admitted:
            await echoes(uri)
        else:
            assert (await refused(uri)).response.status_code == 403
