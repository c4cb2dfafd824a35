"""Backend choice through the real proxy: schedulers, sticky cookies, failover, health.

Backends are demo echo servers; a text `whoami` answers with the backend's name, so each
test counts which backend served each connection.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from http import HTTPStatus
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import TlsFiles, free_port, listener, snapshot, url, wait_until
from tests.integration.tls_clients import https_listener

pytestmark = pytest.mark.integration

SECRET = "integration-test-sticky-secret"


async def whoami(uri: str, **kwargs: Any) -> str:
    """Open a connection, ask which backend answers, close."""
    async with connect(uri, **kwargs) as ws:
        await ws.send("whoami")
        return str(await ws.recv())


async def hold(stack: AsyncExitStack, uri: str, **kwargs: Any) -> tuple[ClientConnection, str]:
    """Open a connection that stays open until `stack` closes; return it and its backend."""
    ws = await stack.enter_async_context(connect(uri, **kwargs))
    await ws.send("whoami")
    return ws, str(await ws.recv())


def sample(runtime: Runtime, name: str, labels: dict[str, str]) -> float | None:
    return runtime.metrics.registry.get_sample_value(name, labels)


def connect_failures(runtime: Runtime, endpoint: dict[str, Any]) -> float:
    key = f"{endpoint['address']}:{endpoint['port']}"
    value = sample(
        runtime,
        "wslb_dataplane_backend_connect_failures_total",
        {"listener": "ws", "backend": key},
    )
    return value or 0.0


def closed_endpoint() -> dict[str, Any]:
    """An endpoint on a loopback port nothing listens on: connections are refused."""
    return {"address": "127.0.0.1", "port": free_port()}


# --- schedulers -----------------------------------------------------------------------


async def test_rr_splits_ten_sequential_connections_five_and_five(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    config = listener(backends={"scheduler": "rr", "endpoints": [one.endpoint, two.endpoint]})
    runtime = await dataplane(snapshot(config))
    served = Counter([await whoami(url(runtime)) for _ in range(10)])
    assert served == {one.name: 5, two.name: 5}


async def test_wrr_with_weights_3_and_1_splits_eight_connections_six_and_two(
    backends: Any, dataplane: Any
) -> None:
    heavy, light = await backends(2)
    endpoints = [{**heavy.endpoint, "weight": 3}, {**light.endpoint, "weight": 1}]
    runtime = await dataplane(
        snapshot(listener(backends={"scheduler": "wrr", "endpoints": endpoints}))
    )
    served = Counter([await whoami(url(runtime)) for _ in range(8)])
    assert served == {heavy.name: 6, light.name: 2}


async def test_wlc_is_the_default_and_spreads_held_connections_evenly(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [one.endpoint, two.endpoint]}))
    )
    assert runtime.listeners["ws"].balancer.scheduler.value == "wlc"
    async with AsyncExitStack() as stack:
        served = Counter([(await hold(stack, url(runtime)))[1] for _ in range(6)])
        assert served == {one.name: 3, two.name: 3}
        assert len(one.server.connections) == len(two.server.connections) == 3


async def test_wlc_spreads_held_connections_by_weight(backends: Any, dataplane: Any) -> None:
    heavy, light = await backends(2)
    endpoints = [{**heavy.endpoint, "weight": 3}, {**light.endpoint, "weight": 1}]
    runtime = await dataplane(snapshot(listener(backends={"endpoints": endpoints})))
    async with AsyncExitStack() as stack:
        served = Counter([(await hold(stack, url(runtime)))[1] for _ in range(8)])
        assert served == {heavy.name: 6, light.name: 2}


async def test_wlc_sends_new_connections_to_the_backend_holding_fewer(
    backends: Any, dataplane: Any
) -> None:
    """Four connections are held on `busy` before `idle` joins; the next four go to `idle`."""
    busy, idle = await backends(2)
    port = free_port()
    runtime = await dataplane(
        snapshot(listener(port=port, backends={"endpoints": [busy.endpoint]}))
    )
    async with AsyncExitStack() as stack:
        first = Counter([(await hold(stack, url(runtime)))[1] for _ in range(4)])
        assert first == {busy.name: 4}
        both = listener(port=port, backends={"endpoints": [busy.endpoint, idle.endpoint]})
        await runtime.apply(parse_snapshot(snapshot(both, version="2")))
        then = Counter([(await hold(stack, url(runtime)))[1] for _ in range(4)])
        assert then == {idle.name: 4}
        assert len(busy.server.connections) == 4


async def test_hash_on_source_ip_sends_every_connection_to_one_backend(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    config = listener(
        backends={
            "scheduler": "hash",
            "hash": {"source": "sourceIP"},
            "endpoints": [one.endpoint, two.endpoint],
        }
    )
    runtime = await dataplane(snapshot(config))
    served = Counter([await whoami(url(runtime)) for _ in range(10)])
    assert len(served) == 1
    assert sum(served.values()) == 10


def by_header(runtime: Runtime, user: str, round_: int) -> Awaitable[str]:
    return whoami(url(runtime), additional_headers={"X-User": user})


def by_query(runtime: Runtime, user: str, round_: int) -> Awaitable[str]:
    """Another parameter beside the key changes between rounds: only the key counts."""
    return whoami(url(runtime, path=f"/chat?room={round_}&user={user}"))


@pytest.mark.parametrize(
    ("key", "ask"),
    [
        ({"source": "header", "name": "X-User"}, by_header),
        ({"source": "query", "name": "user"}, by_query),
    ],
    ids=["header", "query"],
)
async def test_hash_on_a_request_key_keeps_each_value_on_one_backend_and_spreads_values(
    backends: Any,
    dataplane: Any,
    key: dict[str, str],
    ask: Callable[[Runtime, str, int], Awaitable[str]],
) -> None:
    one, two = await backends(2)
    config = listener(
        backends={"scheduler": "hash", "hash": key, "endpoints": [one.endpoint, two.endpoint]}
    )
    runtime = await dataplane(snapshot(config))
    placement: dict[str, set[str]] = {}
    for round_ in range(2):
        for index in range(16):
            user = f"user-{index}"
            placement.setdefault(user, set()).add(await ask(runtime, user, round_))
    assert all(len(names) == 1 for names in placement.values()), placement
    used = set().union(*placement.values())
    assert used == {one.name, two.name}


# --- sticky sessions --------------------------------------------------------------------


def sticky_backends(
    endpoints: list[dict[str, Any]], secret: str = SECRET, **sticky: Any
) -> dict[str, Any]:
    """Round robin under a sticky cookie: without the cookie, connections alternate."""
    return {
        "scheduler": "rr",
        "sticky": {"mode": "insert", "secret": secret, **sticky},
        "endpoints": endpoints,
    }


async def issue_cookies(uri: str, cookie_name: str, wanted: int) -> dict[str, str]:
    """Connect until `wanted` backends were seen; map backend name to the cookie pair
    (`name=value`) the load balancer set on that backend's 101."""
    cookies: dict[str, str] = {}
    for _ in range(10):
        async with connect(uri) as ws:
            assert ws.response is not None
            set_cookie = ws.response.headers["Set-Cookie"]
            await ws.send("whoami")
            served = str(await ws.recv())
        pair = set_cookie.split(";", 1)[0]
        assert pair.startswith(f"{cookie_name}="), set_cookie
        cookies.setdefault(served, pair)
        if len(cookies) == wanted:
            return cookies
    raise AssertionError(f"saw only {sorted(cookies)} in 10 connections")


async def test_sticky_insert_sets_a_cookie_on_the_101_and_the_cookie_returns_to_its_backend(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    config = listener(
        backends=sticky_backends([one.endpoint, two.endpoint], cookieName="lb", maxAgeSeconds=600)
    )
    runtime = await dataplane(snapshot(config))
    async with connect(url(runtime)) as ws:
        assert ws.response is not None
        set_cookie = ws.response.headers["Set-Cookie"]
    attributes = [part.strip() for part in set_cookie.split(";")]
    assert attributes[0].startswith("lb=") and len(attributes[0]) > len("lb=")
    assert "Max-Age=600" in attributes
    assert "HttpOnly" in attributes

    cookies = await issue_cookies(url(runtime), "lb", 2)
    for name, pair in cookies.items():
        served = [await whoami(url(runtime), additional_headers={"Cookie": pair}) for _ in range(4)]
        assert served == [name] * 4


async def test_sticky_cookie_signed_with_another_secret_is_ignored(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    endpoints = [one.endpoint, two.endpoint]
    issuer = await dataplane(snapshot(listener(backends=sticky_backends(endpoints))))
    other = await dataplane(
        snapshot(listener(backends=sticky_backends(endpoints, secret="a different secret")))
    )
    cookies = await issue_cookies(url(issuer), "WSLB_STICKY", 2)
    pair = cookies[one.name]
    served = Counter(
        [await whoami(url(other), additional_headers={"Cookie": pair}) for _ in range(4)]
    )
    assert served == {one.name: 2, two.name: 2}


async def test_sticky_cookie_from_one_dataplane_process_is_honoured_by_another(
    backends: Any, dataplane_process: Any
) -> None:
    """Two `wslb-dataplane` processes share the config and secret, each on its own port."""
    one, two = await backends(2)
    endpoints = [one.endpoint, two.endpoint]
    first_port, second_port = free_port(), free_port()
    first = dataplane_process(
        snapshot(listener(port=first_port, backends=sticky_backends(endpoints)))
    )
    second = dataplane_process(
        snapshot(listener(port=second_port, backends=sticky_backends(endpoints)))
    )
    await asyncio.gather(first.wait_ready(), second.wait_ready())

    cookies = await issue_cookies(f"ws://127.0.0.1:{first_port}/", "WSLB_STICKY", 2)
    for name, pair in cookies.items():
        served = [
            await whoami(f"ws://127.0.0.1:{second_port}/", additional_headers={"Cookie": pair})
            for _ in range(3)
        ]
        assert served == [name] * 3


# --- failover, no backend, health -------------------------------------------------------


async def test_connections_fail_over_from_a_closed_port_and_failures_are_counted(
    backends: Any, dataplane: Any
) -> None:
    (live,) = await backends(1)
    dead = closed_endpoint()
    config = listener(backends={"scheduler": "rr", "endpoints": [dead, live.endpoint]})
    runtime = await dataplane(snapshot(config))
    served = [await whoami(url(runtime)) for _ in range(6)]
    assert served == [live.name] * 6
    assert connect_failures(runtime, dead) >= 1
    assert connect_failures(runtime, live.endpoint) == 0
    upgraded = sample(runtime, "wslb_dataplane_upgrades_total", {"listener": "ws", "code": "101"})
    assert upgraded == 6


async def silent_server(close_at_once: bool) -> tuple[asyncio.Server, list[int]]:
    """A TCP server that never answers a request (or closes each connection at once);
    the list counts accepted connections."""
    accepted: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        if not close_at_once:
            await reader.read(-1)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, accepted


@pytest.mark.parametrize("close_at_once", [False, True], ids=["never-answers", "closes"])
async def test_backend_that_does_not_answer_the_upgrade_is_skipped_for_another(
    backends: Any, dataplane: Any, close_at_once: bool
) -> None:
    """A backend that accepts TCP but never answers (times out after connectTimeoutSeconds)
    or closes without answering is counted as a failure and the client reaches the other."""
    (live,) = await backends(1)
    server, accepted = await silent_server(close_at_once)
    async with server:
        broken = {"address": "127.0.0.1", "port": server.sockets[0].getsockname()[1]}
        config = listener(
            backends={"scheduler": "rr", "endpoints": [broken, live.endpoint]},
            limits={"connectTimeoutSeconds": 0.3},
        )
        runtime = await dataplane(snapshot(config))
        loop = asyncio.get_running_loop()
        started = loop.time()
        served = [await whoami(url(runtime)) for _ in range(2)]
        elapsed = loop.time() - started
        assert served == [live.name] * 2
        assert len(accepted) >= 1
        assert connect_failures(runtime, broken) == len(accepted)
        assert elapsed < 2.0, elapsed


async def test_all_endpoints_refusing_gives_502(dataplane: Any) -> None:
    dead = [closed_endpoint(), closed_endpoint()]
    runtime = await dataplane(snapshot(listener(backends={"endpoints": dead})))
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url(runtime)):
            pass
    assert caught.value.response.status_code == 502
    assert caught.value.response.body
    assert all(connect_failures(runtime, endpoint) >= 1 for endpoint in dead)
    total_attempts = sum(connect_failures(runtime, endpoint) for endpoint in dead)
    assert total_attempts <= 3  # connectRetries defaults to 2: at most three attempts
    reason = {"listener": "ws", "reason": "backend_unavailable"}
    assert sample(runtime, "wslb_dataplane_rejections_total", reason) == 1


@pytest.mark.parametrize(
    "override",
    [{"ready": False}, {"draining": True}, {"weight": 0}],
    ids=["not-ready", "draining", "weight-0"],
)
async def test_no_ready_endpoint_gives_503_with_retry_after(
    backends: Any, dataplane: Any, override: dict[str, Any]
) -> None:
    """Endpoints that exist and listen but may not take new connections count as none."""
    one, two = await backends(2)
    endpoints = [{**one.endpoint, **override}, {**two.endpoint, **override}]
    runtime = await dataplane(snapshot(listener(backends={"endpoints": endpoints})))
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url(runtime)):
            pass
    response = caught.value.response
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert len(one.server.connections) == len(two.server.connections) == 0
    reason = {"listener": "ws", "reason": "no_ready_backend"}
    assert sample(runtime, "wslb_dataplane_rejections_total", reason) == 1


async def test_listener_without_endpoints_gives_503_with_retry_after(dataplane: Any) -> None:
    runtime = await dataplane(snapshot(listener(backends={"endpoints": []})))
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url(runtime)):
            pass
    assert caught.value.response.status_code == 503
    assert int(caught.value.response.headers["Retry-After"]) >= 1


async def test_hash_walks_past_a_refusing_endpoint_and_keeps_keys_that_were_not_on_it(
    backends: Any, dataplane: Any
) -> None:
    """With one endpoint refusing, every key still connects, and keys whose first choice
    was the live endpoint stay there."""
    (live,) = await backends(1)
    dead = closed_endpoint()
    config = listener(
        backends={
            "scheduler": "hash",
            "hash": {"source": "header", "name": "X-User"},
            "endpoints": [dead, live.endpoint],
        }
    )
    runtime = await dataplane(snapshot(config))
    served = [
        await whoami(url(runtime), additional_headers={"X-User": f"user-{index}"})
        for index in range(12)
    ]
    assert served == [live.name] * 12
    failures = connect_failures(runtime, dead)
    assert 1 <= failures < 12  # some keys hash to the dead endpoint first, not all


async def test_sticky_cookie_for_a_refusing_backend_falls_back_and_is_reissued(
    backends: Any, dataplane: Any
) -> None:
    one, two = await backends(2)
    config = listener(backends=sticky_backends([one.endpoint, two.endpoint]))
    runtime = await dataplane(snapshot(config))
    cookies = await issue_cookies(url(runtime), "WSLB_STICKY", 2)
    await two.stop()
    async with connect(url(runtime), additional_headers={"Cookie": cookies[two.name]}) as ws:
        assert ws.response is not None
        fresh = ws.response.headers["Set-Cookie"].split(";", 1)[0]
        await ws.send("whoami")
        assert await ws.recv() == one.name
    assert fresh != cookies[two.name]
    assert connect_failures(runtime, two.endpoint) == 1  # the cookie was tried first
    assert await whoami(url(runtime), additional_headers={"Cookie": fresh}) == one.name


async def test_sticky_insert_cookie_is_not_forwarded_and_the_backends_cookie_survives(
    dataplane: Any,
) -> None:
    seen: list[Request] = []

    def capture(connection: ServerConnection, request: Request) -> None:
        seen.append(request)

    async def echo(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send(message)

    def own_cookie(connection: ServerConnection, request: Request, response: Response) -> None:
        response.headers["Set-Cookie"] = "app=42; Path=/"

    async with serve(
        echo, "127.0.0.1", 0, process_request=capture, process_response=own_cookie
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        endpoint = {"address": "127.0.0.1", "port": port}
        runtime = await dataplane(snapshot(listener(backends=sticky_backends([endpoint]))))
        async with connect(url(runtime)) as ws:
            assert ws.response is not None
            set_cookies = ws.response.headers.get_all("Set-Cookie")
        assert "app=42; Path=/" in set_cookies, set_cookies
        (ours,) = [item for item in set_cookies if item.startswith("WSLB_STICKY=")]
        pair = ours.split(";", 1)[0]
        cookie = f"theme=dark; {pair}; session=abc"
        async with connect(url(runtime), additional_headers={"Cookie": cookie}) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    assert len(seen) == 2
    forwarded = seen[1].headers.get_all("Cookie")
    assert "WSLB_STICKY" not in "; ".join(forwarded)
    assert "theme=dark" in "; ".join(forwarded)
    assert "session=abc" in "; ".join(forwarded)


async def test_sticky_cookie_on_a_wss_listener_is_secure(
    backends: Any, dataplane: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = https_listener(tls, sticky_backends([backend.endpoint]))
    runtime = await dataplane(snapshot(config))
    async with connect(url(runtime, "wss"), ssl=tls.client_context) as ws:
        assert ws.response is not None
        attributes = [part.strip() for part in ws.response.headers["Set-Cookie"].split(";")]
    assert "Secure" in attributes


async def test_unhealthy_backend_gets_no_new_connections_after_the_tcp_check_flips(
    backends: Any, dataplane: Any
) -> None:
    staying, stopping = await backends(2)
    config = listener(
        backends={
            "scheduler": "rr",
            "healthCheck": {
                "type": "tcp",
                "intervalSeconds": 0.2,
                "timeoutSeconds": 0.1,
                "unhealthyThreshold": 1,
            },
            "endpoints": [staying.endpoint, stopping.endpoint],
        }
    )
    runtime = await dataplane(snapshot(config))

    def healthy(backend: Any) -> float | None:
        labels = {"listener": "ws", "backend": f"127.0.0.1:{backend.port}"}
        return sample(runtime, "wslb_dataplane_backend_healthy", labels)

    assert healthy(staying) == healthy(stopping) == 1
    before = Counter([await whoami(url(runtime)) for _ in range(4)])
    assert before == {staying.name: 2, stopping.name: 2}

    await stopping.stop()
    await wait_until(lambda: healthy(stopping) == 0, timeout=3)
    failures_at_flip = connect_failures(runtime, stopping.endpoint)
    served = [await whoami(url(runtime)) for _ in range(6)]
    assert served == [staying.name] * 6
    assert connect_failures(runtime, stopping.endpoint) == failures_at_flip
    assert healthy(staying) == 1


async def test_unhealthy_backend_keeps_its_live_connections_and_gets_new_ones_after_recovery(
    backends: Any, dataplane: Any
) -> None:
    """An HTTP check that starts failing (the backend still runs) stops new connections
    only; the one already open keeps echoing; passing again brings new ones back."""
    (steady,) = await backends(1)
    failing = {"on": False}

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            status = HTTPStatus.SERVICE_UNAVAILABLE if failing["on"] else HTTPStatus.OK
            return connection.respond(status, "health\n")
        return None

    async def named(connection: ServerConnection) -> None:
        async for message in connection:
            await connection.send("flaky" if message == "whoami" else message)

    async with serve(named, "127.0.0.1", 0, process_request=health) as server:
        flaky = {"address": "127.0.0.1", "port": next(iter(server.sockets)).getsockname()[1]}
        config = listener(
            backends={
                "scheduler": "rr",
                "healthCheck": {
                    "type": "http",
                    "path": "/healthz",
                    "intervalSeconds": 0.2,
                    "timeoutSeconds": 0.1,
                    "unhealthyThreshold": 1,
                    "healthyThreshold": 1,
                },
                "endpoints": [steady.endpoint, flaky],
            }
        )
        runtime = await dataplane(snapshot(config))
        labels = {"listener": "ws", "backend": f"127.0.0.1:{flaky['port']}"}

        def flaky_health() -> float | None:
            return sample(runtime, "wslb_dataplane_backend_healthy", labels)

        async with AsyncExitStack() as stack:
            held = None
            for _ in range(2):
                ws, name = await hold(stack, url(runtime))
                if name == "flaky":
                    held = ws
            assert held is not None

            failing["on"] = True
            await wait_until(lambda: flaky_health() == 0, timeout=3)
            served = [await whoami(url(runtime)) for _ in range(4)]
            assert served == [steady.name] * 4
            await held.send("still here")
            assert await held.recv() == "still here"

            failing["on"] = False
            await wait_until(lambda: flaky_health() == 1, timeout=3)
            served = [await whoami(url(runtime)) for _ in range(4)]
            assert Counter(served) == {steady.name: 2, "flaky": 2}


async def test_sticky_cookie_is_honoured_by_every_worker_of_one_process(
    backends: Any, dataplane_process: Any
) -> None:
    """With --workers 2 the kernel spreads connections over both workers; each honours the
    cookie (and both see the cookie another worker issued)."""
    one, two = await backends(2)
    port = free_port()
    running = dataplane_process(
        snapshot(listener(port=port, backends=sticky_backends([one.endpoint, two.endpoint]))),
        "--workers",
        "2",
    )
    await running.wait_ready()
    uri = f"ws://127.0.0.1:{port}/"
    cookies = await issue_cookies(uri, "WSLB_STICKY", 2)
    for name, pair in cookies.items():
        served = [await whoami(uri, additional_headers={"Cookie": pair}) for _ in range(8)]
        assert served == [name] * 8

    status, text = await running.admin("/metrics")
    assert status == 200
    upgraded_by_worker = {
        sample.labels["worker"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "wslb_dataplane_upgrades_total" and sample.labels["code"] == "101"
    }
    assert len(upgraded_by_worker) == 2, upgraded_by_worker  # both workers served some
    assert all(value >= 1 for value in upgraded_by_worker.values())
    assert sum(upgraded_by_worker.values()) >= 16
