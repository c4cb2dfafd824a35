"""Forwarding rules, retries, the HTTPS redirect and sticky sessions across HTTP and
WebSocket, through a real listener on loopback."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import StartHttp as Start
from tests.integration.conftest import free_port, listener, snapshot
from tests.integration.http_backend import Client, Seen, get, response

pytestmark = pytest.mark.integration


async def ask(port: int, request: bytes, method: str = "GET") -> tuple[int, bytes]:
    client = await Client.connect(port)
    try:
        client.send(request)
        answer = await client.answer(method)
        return answer.status, answer.body
    finally:
        client.close()


async def test_host_and_path_rules_choose_the_backend_group(
    dataplane: Any, http_backend: Start
) -> None:
    api = await http_backend(name="api")
    files = await http_backend(name="files")
    default = await http_backend(name="default")
    config = listener(
        backends={"endpoints": [default.endpoint]},
        rules=[
            {
                "name": "api",
                "match": {"host": "api.example.com"},
                "backends": {"endpoints": [api.endpoint]},
            },
            {
                "name": "files",
                "match": {"path": "/files"},
                "backends": {"endpoints": [files.endpoint]},
            },
        ],
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    await ask(port, get("/files/a", host="api.example.com"))  # the host comes first
    await ask(port, get("/files/b", host="www.example.com"))
    await ask(port, get("/filesystem", host="www.example.com"))  # not the /files segment
    await ask(port, get("/", host="API.example.com:8080"))
    assert [seen.target for seen in api.requests] == ["/files/a", "/"]
    assert [seen.target for seen in files.requests] == ["/files/b"]
    assert [seen.target for seen in default.requests] == ["/filesystem"]
    found = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_http_requests_total",
        {"listener": "ws", "rule": "api", "method": "GET", "code": "2xx"},
    )
    assert found == 2


async def test_rule_idle_timeout_applies_to_its_websockets_only(
    dataplane: Any, backends: Any
) -> None:
    [echo] = await backends(1)
    config = listener(
        backends={"endpoints": [echo.endpoint]},
        idleTimeoutSeconds=60,
        rules=[
            {
                "name": "quick",
                "match": {"path": "/quick"},
                "backends": {"endpoints": [echo.endpoint]},
                "idleTimeoutSeconds": 0.3,
            }
        ],
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    async with (
        connect(f"ws://127.0.0.1:{port}/quick", ping_interval=None) as quick,
        connect(f"ws://127.0.0.1:{port}/slow", ping_interval=None) as slow,
    ):
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await quick.recv()
        assert quick.close_code == 1001  # the rule's idle timeout
        await slow.send("still here")
        assert await slow.recv() == "still here"


async def test_idempotent_request_is_retried_on_another_endpoint(
    dataplane: Any, http_backend: Start
) -> None:
    async def hang_up(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.close()  # fails before a byte of its answer

    bad = await http_backend(handler=hang_up)
    good = await http_backend()
    config = listener(backends={"scheduler": "rr", "endpoints": [bad.endpoint, good.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    statuses = [(await ask(port, get(f"/{n}")))[0] for n in range(4)]
    assert statuses == [200] * 4
    assert bad.requests, "the failing endpoint was tried"
    assert sorted(seen.target for seen in good.requests) == ["/0", "/1", "/2", "/3"]
    errors = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_http_backend_errors_total",
        {"listener": "ws", "rule": "default", "kind": "reset"},
    )
    assert errors == len(bad.requests)


async def test_post_is_not_retried_after_reaching_a_backend(
    dataplane: Any, http_backend: Start
) -> None:
    async def hang_up(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.close()

    bad = await http_backend(handler=hang_up)
    good = await http_backend()
    config = listener(backends={"scheduler": "rr", "endpoints": [bad.endpoint, good.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    post = b"POST /order HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
    statuses = [(await ask(port, post))[0] for _ in range(4)]
    assert sorted(statuses) == [200, 200, 502, 502]
    assert len(bad.requests) == 2
    assert len(good.requests) == 2  # a 502 was never sent on to the good endpoint


async def test_connect_failure_is_retried_for_any_method(
    dataplane: Any, http_backend: Start
) -> None:
    good = await http_backend()
    closed = {"address": "127.0.0.1", "port": free_port()}  # nothing listens there
    config = listener(backends={"scheduler": "rr", "endpoints": [closed, good.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    post = b"POST /order HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nok"
    statuses = [(await ask(port, post))[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert [seen.body for seen in good.requests] == [b"ok"] * 4


async def test_redirect_to_https_answers_308_for_requests_and_upgrades(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        http={"redirectToHttps": {"enabled": True, "port": 8443}},
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    client = await Client.connect(port)
    client.send(get("/a/b?c=1", host="Example.com:8080"))
    answer = await client.answer()
    client.close()
    assert answer.status == 308
    assert answer.field("Location") == "https://example.com:8443/a/b?c=1"
    client = await Client.connect(port)
    client.send(
        b"GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    upgrade = await client.answer()
    client.close()
    assert upgrade.status == 308
    assert upgrade.field("Location") == "https://example.com:8443/ws"
    assert backend.accepted == 0


async def test_sticky_cookie_set_on_http_takes_the_upgrade_to_the_same_backend(
    dataplane: Any, backends: Any
) -> None:
    """socket.io's polling-then-upgrade: the cookie from a plain response pins the
    WebSocket to the backend that answered it."""
    one, two = await backends(2)
    config = listener(
        backends={
            "scheduler": "rr",
            "endpoints": [one.endpoint, two.endpoint],
            "sticky": {"mode": "insert", "secret": "s3cret", "cookieName": "lb"},
        }
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    client = await Client.connect(port)
    client.send(get("/healthz"))
    first = await client.answer()
    cookie = (first.field("Set-Cookie") or "").split(";")[0]
    assert cookie.startswith("lb=")
    pinned = first.field("X-Backend")
    for _ in range(3):
        client.send(get("/healthz", extra=f"Cookie: {cookie}\r\n"))
        again = await client.answer()
        assert again.field("X-Backend") == pinned
        assert again.field("Set-Cookie") is None  # the client holds a valid cookie already
    client.close()
    for _ in range(2):
        async with connect(f"ws://127.0.0.1:{port}/", additional_headers={"Cookie": cookie}) as ws:
            await ws.send("whoami")
            assert await ws.recv() == pinned


async def test_sticky_cookie_past_half_its_age_is_renewed_by_a_plain_response(
    dataplane: Any, backends: Any
) -> None:
    """As an upgrade renews it: a client that keeps coming back stays pinned past the
    first max age, and one that came back recently gets no Set-Cookie."""
    one, two = await backends(2)
    policy = {"mode": "insert", "secret": "s3cret", "cookieName": "lb", "maxAgeSeconds": 600}
    config = listener(
        backends={"scheduler": "rr", "endpoints": [one.endpoint, two.endpoint], "sticky": policy}
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    group = runtime.listeners["ws"].default
    # the cookie `two` would have set 400 s ago, 200 s of its 600 left
    key = f"127.0.0.1:{two.port}"
    old = group.sticky.issue(key, now=time.time() - 400)
    client = await Client.connect(port)
    client.send(get("/healthz", extra=f"Cookie: lb={old}\r\n"))
    renewed = await client.answer()
    assert renewed.field("X-Backend") == two.name  # still pinned to the same backend
    set_cookie = renewed.field("Set-Cookie") or ""
    assert set_cookie.startswith("lb=") and "Max-Age=600" in set_cookie
    fresh = set_cookie.split(";")[0].removeprefix("lb=")
    assert group.sticky.verify(fresh) == key
    assert int(fresh.split(".")[1]) > int(old.split(".")[1]) + 300  # a new max age
    client.send(get("/healthz", extra=f"Cookie: lb={fresh}\r\n"))
    again = await client.answer()
    client.close()
    assert again.field("X-Backend") == two.name
    assert again.field("Set-Cookie") is None  # fresh: nothing to renew


async def test_backend_keep_alive_field_is_not_relayed_and_response_via_is_added(
    dataplane: Any, http_backend: Start
) -> None:
    async def with_hop_fields(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(
            response(
                200,
                b"x",
                [
                    ("Keep-Alive", "timeout=1"),
                    ("Connection", "X-Hop"),
                    ("X-Hop", "secret"),
                    ("X-End", "kept"),
                ],
            )
        )

    backend = await http_backend(handler=with_hop_fields)
    runtime: Runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    )
    client = await Client.connect(runtime.listeners["ws"].config.port)
    client.send(get())
    answer = await client.answer()
    client.close()
    assert answer.field("Keep-Alive") is None
    assert answer.field("X-Hop") is None
    assert answer.field("X-End") == "kept"
    assert answer.field("Via") == "1.1 wslb"


async def test_removing_a_rule_drains_its_websockets_with_its_drain_timeout(
    dataplane: Any, backends: Any
) -> None:
    [echo] = await backends(1)

    def config(rules: list[dict[str, Any]]) -> dict[str, Any]:
        return listener(
            port=port, backends={"endpoints": [echo.endpoint]}, drainTimeoutSeconds=60, rules=rules
        )

    port = free_port()
    chat = {
        "name": "chat",
        "match": {"path": "/chat"},
        "backends": {"endpoints": [echo.endpoint]},
        "drainTimeoutSeconds": 0,
    }
    runtime: Runtime = await dataplane(snapshot(config([chat])))
    async with (
        connect(f"ws://127.0.0.1:{port}/chat", ping_interval=None) as in_rule,
        connect(f"ws://127.0.0.1:{port}/other", ping_interval=None) as in_default,
    ):
        await runtime.apply(parse_snapshot(snapshot(config([]), version="2")))
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await in_rule.recv()
        assert in_rule.close_code == 1001  # its group left: drained at once (0 s)
        await in_default.send("kept")
        assert await in_default.recv() == "kept"  # the default group is untouched
