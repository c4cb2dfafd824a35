"""Health checks against the real demo echo backend on loopback."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from websockets.asyncio.server import Server

from dataplane.echo import bound_port, start_echo
from dataplane.health import HealthChecker, probe
from lbwire.snapshot import Endpoint, HealthCheck

pytestmark = pytest.mark.integration

FAST = {"interval_seconds": 0.1, "timeout_seconds": 0.1}
DEADLINE = 5.0


@pytest.fixture
async def echo() -> AsyncIterator[Server]:
    server = await start_echo("127.0.0.1", 0, name="health-test")
    yield server
    server.close()
    await server.wait_closed()


def free_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def until(condition: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Poll until `condition` holds; return how long it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not condition():
        if loop.time() - start > deadline:
            raise AssertionError(f"not within {deadline} s: {what}")
        await asyncio.sleep(0.01)
    return loop.time() - start


# --- single probes --------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        HealthCheck(type="websocket", path="/", **FAST),
        HealthCheck(type="http", path="/healthz", **FAST),
        HealthCheck(type="tcp", **FAST),
    ],
    ids=["websocket", "http", "tcp"],
)
async def test_each_check_type_succeeds_against_the_echo_backend(
    echo: Server, policy: HealthCheck
) -> None:
    assert await probe(policy, "127.0.0.1", bound_port(echo)) is None


@pytest.mark.parametrize("kind", ["websocket", "http", "tcp"])
async def test_each_check_type_fails_against_a_closed_port(kind: str) -> None:
    policy = HealthCheck(type=kind, path="/healthz", **FAST)
    failure = await probe(policy, "127.0.0.1", free_port())
    assert failure is not None
    assert "Connect" in failure or "refused" in failure.lower()


async def test_http_check_fails_on_an_unexpected_status(echo: Server) -> None:
    """The echo backend answers a plain GET outside /healthz with 426."""
    policy = HealthCheck(type="http", path="/other", **FAST)
    failure = await probe(policy, "127.0.0.1", bound_port(echo))
    assert failure is not None
    assert "status 426" in failure
    accepting = HealthCheck(type="http", path="/other", expected_statuses=[426], **FAST)
    assert await probe(accepting, "127.0.0.1", bound_port(echo)) is None


async def test_check_times_out_against_a_server_that_never_answers() -> None:
    """A listener that accepts but never speaks: bounded by timeoutSeconds."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        for kind in ("websocket", "http"):
            policy = HealthCheck(type=kind, **FAST)
            started = asyncio.get_running_loop().time()
            failure = await probe(policy, "127.0.0.1", port)
            assert failure is not None
            assert asyncio.get_running_loop().time() - started < 1.0
    finally:
        silent.close()
        await silent.wait_closed()


async def test_websocket_check_works_over_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        server = await start_echo("::1", 0, name="v6")
    except OSError:
        pytest.skip("IPv6 loopback not available")
    try:
        for kind in ("websocket", "http", "tcp"):
            policy = HealthCheck(type=kind, path="/healthz", **FAST)
            assert await probe(policy, "::1", bound_port(server)) is None, kind
    finally:
        server.close()
        await server.wait_closed()


# --- the checker ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["websocket", "http", "tcp"])
async def test_endpoint_flips_unhealthy_when_backend_stops_and_back_when_it_returns(
    kind: str,
) -> None:
    server = await start_echo("127.0.0.1", 0, name="flip")
    port = bound_port(server)
    endpoint = Endpoint(address="127.0.0.1", port=port)
    policy = HealthCheck(
        type=kind,
        path="/healthz",
        healthy_threshold=2,
        unhealthy_threshold=3,
        **FAST,
    )
    changes: list[tuple[str, bool]] = []
    checker = HealthChecker(policy, lambda key, ok: changes.append((key, ok)), name="flip")
    try:
        checker.update([endpoint])
        assert checker.is_healthy(endpoint.key)
        # A running healthy backend never flips.
        await asyncio.sleep(0.5)
        assert changes == []

        server.close()
        await server.wait_closed()
        took = await until(lambda: not checker.is_healthy(endpoint.key), "flip to unhealthy")
        assert changes == [(endpoint.key, False)]
        # Three failed checks 0.1 s apart take about 0.3 s; the margin is for a busy CI box.
        assert took < 1.5

        server = await start_echo("127.0.0.1", port, name="flip-again")
        await until(lambda: checker.is_healthy(endpoint.key), "flip back to healthy")
        assert changes == [(endpoint.key, False), (endpoint.key, True)]
    finally:
        await checker.close()
        server.close()
        await server.wait_closed()


async def test_update_starts_and_stops_one_task_per_endpoint(echo: Server) -> None:
    dead = Endpoint(address="127.0.0.1", port=free_port())
    alive = Endpoint(address="127.0.0.1", port=bound_port(echo))
    policy = HealthCheck(type="tcp", unhealthy_threshold=1, **FAST)
    changes: list[tuple[str, bool]] = []
    checker = HealthChecker(policy, lambda key, ok: changes.append((key, ok)), name="upd")
    try:
        checker.update([alive, dead])
        await until(lambda: not checker.is_healthy(dead.key), "dead endpoint detected")
        assert checker.statuses() == {alive.key: True, dead.key: False}
        tasks_before = {t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("health")}
        assert len(tasks_before) == 2

        checker.update([alive])
        assert checker.statuses() == {alive.key: True}
        assert checker.is_healthy(dead.key)  # unknown keys count as healthy
        await until(
            lambda: all(t.done() for t in tasks_before if t.get_name().endswith(f" {dead.key}")),
            "removed endpoint's task ended",
        )
    finally:
        await checker.close()
    assert all(t.done() for t in tasks_before)
    assert changes == [(dead.key, False)]


async def test_policy_none_starts_no_tasks_and_reports_healthy() -> None:
    dead = Endpoint(address="127.0.0.1", port=free_port())
    checker = HealthChecker(HealthCheck(), lambda key, ok: None, name="none")
    checker.update([dead])
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("health none")]
    await asyncio.sleep(0.2)
    assert checker.is_healthy(dead.key)
    await checker.close()


async def test_set_policy_none_restores_health_and_stops_checking() -> None:
    dead = Endpoint(address="127.0.0.1", port=free_port())
    changes: list[tuple[str, bool]] = []
    policy = HealthCheck(type="tcp", unhealthy_threshold=1, **FAST)
    checker = HealthChecker(policy, lambda key, ok: changes.append((key, ok)), name="swap")
    try:
        checker.update([dead])
        await until(lambda: not checker.is_healthy(dead.key), "dead endpoint detected")
        checker.set_policy(HealthCheck())
        assert checker.is_healthy(dead.key)
        assert changes == [(dead.key, False), (dead.key, True)]
        await asyncio.sleep(0.3)
        assert checker.is_healthy(dead.key)
    finally:
        await checker.close()


async def test_a_failing_callback_does_not_stop_the_checker(echo: Server) -> None:
    dead = Endpoint(address="127.0.0.1", port=free_port())
    calls: list[bool] = []

    def explode(key: str, healthy: bool) -> None:
        calls.append(healthy)
        raise RuntimeError("callback bug")

    policy = HealthCheck(type="tcp", unhealthy_threshold=1, healthy_threshold=1, **FAST)
    checker = HealthChecker(policy, explode, name="boom")
    try:
        checker.update([dead])
        await until(lambda: calls == [False], "first flip")
        # The same port comes alive: the task survived the exception and sees it.
        server = await start_echo("127.0.0.1", dead.port, name="late")
        try:
            await until(lambda: calls == [False, True], "second flip")
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await checker.close()
