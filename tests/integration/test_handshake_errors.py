"""Requests that are not valid WebSocket upgrades get an HTTP error and never reach a backend.

Every test runs the data plane in front of a backend that counts the TCP connections it
accepts and the requests it sees. After a rejection the test sends one valid upgrade
through the same listener and checks that exactly that one arrived: the counter works,
and the rejected request left no trace on the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Request, Response

from dataplane.runtime import Runtime
from tests.integration.conftest import listener, raw_request, snapshot, upgrade_request, url

pytestmark = pytest.mark.integration

Answer = Callable[[ServerConnection, Request], Response | None]

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
MAX_SHORT_BODY = 300


@dataclass
class CountingBackend:
    """A websockets echo server that records every TCP accept and every request head.

    `answer` may return a non-101 response for a request (like a real application
    refusing a room or a token)."""

    answer: Answer | None = None
    accepted: int = 0
    requests: list[Request] = field(default_factory=list)
    server: Server | None = None

    async def start(self) -> None:
        backend = self

        class Counted(ServerConnection):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                backend.accepted += 1
                super().connection_made(transport)

        def process_request(connection: ServerConnection, request: Request) -> Response | None:
            self.requests.append(request)
            return self.answer(connection, request) if self.answer is not None else None

        async def echo(connection: ServerConnection) -> None:
            async for message in connection:
                await connection.send(message)

        self.server = await serve(
            echo, "127.0.0.1", 0, process_request=process_request, create_connection=Counted
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(next(iter(self.server.sockets)).getsockname()[1])

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": self.port}

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@dataclass
class HttpAnswer:
    status: int
    headers: Headers
    body: bytes


def parse_answer(data: bytes) -> HttpAnswer:
    head, separator, body = data.partition(b"\r\n\r\n")
    assert separator, f"no complete HTTP response head in {data[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, status, _ = status_line.split(" ", 2)
    assert version == "HTTP/1.1", status_line
    headers = Headers()
    for line in lines:
        name, colon, value = line.partition(":")
        assert colon, f"bad header line {line!r}"
        headers[name.strip()] = value.strip()
    return HttpAnswer(int(status), headers, body)


def assert_short_error(answer: HttpAnswer, status: int) -> None:
    """The status we expect, with a short plain body whose length is declared."""
    assert answer.status == status, answer
    assert 0 < len(answer.body) <= MAX_SHORT_BODY, answer.body
    assert answer.headers["Content-Length"] == str(len(answer.body))


def request_bytes(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@pytest.fixture
async def backend() -> AsyncIterator[CountingBackend]:
    counting = CountingBackend()
    await counting.start()
    yield counting
    await counting.stop()


Proxy = Callable[..., Awaitable[Runtime]]


@pytest.fixture
def proxy(dataplane: Any, backend: CountingBackend) -> Proxy:
    """A data plane with one listener `ws` in front of the counting backend."""

    async def start(**fields: Any) -> Runtime:
        config = listener(backends={"endpoints": [backend.endpoint]}, **fields)
        runtime: Runtime = await dataplane(snapshot(config))
        return runtime

    return start


def port_of(runtime: Runtime) -> int:
    return runtime.listeners["ws"].config.port


async def assert_never_reached_backend(runtime: Runtime, backend: CountingBackend) -> None:
    """Nothing arrived so far; then a valid upgrade arrives, proving the counters count."""
    assert backend.accepted == 0
    assert backend.requests == []
    async with connect(url(runtime)) as ws:
        await ws.send("still works")
        assert await ws.recv() == "still works"
    assert backend.accepted == 1
    assert len(backend.requests) == 1


async def test_plain_get_is_proxied_to_the_backend_not_refused(
    proxy: Proxy, backend: CountingBackend
) -> None:
    """A request that is not an upgrade is plain HTTP now (issue 10): the backend answers
    it (this websockets backend with its own 426), and the answer comes back through us."""
    runtime = await proxy()
    data = await raw_request(
        port_of(runtime),
        request_bytes("GET / HTTP/1.1", "Host: 127.0.0.1", "Accept: */*", "Connection: close"),
    )
    answer = parse_answer(data)
    assert answer.status == 426
    assert answer.headers["Via"] == "1.1 wslb"  # relayed by the proxy, not its own answer
    assert backend.accepted == 1
    assert [request.path for request in backend.requests] == ["/"]


async def test_websocket_version_8_is_answered_426_with_version_13(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy()
    data = await raw_request(
        port_of(runtime),
        request_bytes(
            "GET / HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {KEY}",
            "Sec-WebSocket-Version: 8",
        ),
    )
    answer = parse_answer(data)
    assert_short_error(answer, 426)
    assert answer.headers["Sec-WebSocket-Version"] == "13"
    await assert_never_reached_backend(runtime, backend)


async def test_missing_websocket_key_is_answered_400(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy()
    data = await raw_request(
        port_of(runtime),
        request_bytes(
            "GET / HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
        ),
    )
    assert_short_error(parse_answer(data), 400)
    await assert_never_reached_backend(runtime, backend)


async def test_websocket_key_that_is_not_16_base64_bytes_is_answered_400(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy()
    data = await raw_request(
        port_of(runtime),
        request_bytes(
            "GET / HTTP/1.1",
            "Host: 127.0.0.1",
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Key: c2hvcnQ=",
            "Sec-WebSocket-Version: 13",
        ),
    )
    assert_short_error(parse_answer(data), 400)
    await assert_never_reached_backend(runtime, backend)


async def test_garbage_request_line_is_answered_400(proxy: Proxy, backend: CountingBackend) -> None:
    runtime = await proxy()
    data = await raw_request(port_of(runtime), b"\x16\x03\x01 hello there\r\nfoo\r\n\r\n")
    assert_short_error(parse_answer(data), 400)
    await assert_never_reached_backend(runtime, backend)


async def test_post_upgrade_is_answered_405_allowing_get(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy()
    post = upgrade_request().replace(b"GET ", b"POST ", 1)
    answer = parse_answer(await raw_request(port_of(runtime), post))
    assert_short_error(answer, 405)
    assert answer.headers["Allow"] == "GET"
    await assert_never_reached_backend(runtime, backend)


async def test_missing_host_is_answered_400(proxy: Proxy, backend: CountingBackend) -> None:
    runtime = await proxy()
    no_host = upgrade_request().replace(b"Host: 127.0.0.1\r\n", b"")
    assert b"Host" not in no_host
    assert_short_error(parse_answer(await raw_request(port_of(runtime), no_host)), 400)
    await assert_never_reached_backend(runtime, backend)


def padded_upgrade(total: int) -> bytes:
    """A valid upgrade head of exactly `total` bytes, padded with 1000-byte headers."""
    head = upgrade_request()
    padding: list[str] = []
    index = 0
    while len(head) + sum(len(line) + 2 for line in padding) < total:
        room = total - len(head) - sum(len(line) + 2 for line in padding) - 2
        name = f"X-Pad-{index}: "
        padding.append(name + "a" * max(1, min(1000, room - len(name))))
        index += 1
    result = upgrade_request(extra="".join(line + "\r\n" for line in padding))
    assert len(result) == total, len(result)
    return result


async def test_head_over_the_default_16_kib_is_answered_431(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy()
    answer = parse_answer(await raw_request(port_of(runtime), padded_upgrade(16 * 1024 + 1)))
    assert_short_error(answer, 431)
    await assert_never_reached_backend(runtime, backend)


async def test_head_just_under_the_default_limit_is_proxied(
    proxy: Proxy, backend: CountingBackend
) -> None:
    """The control for the 431 test: a 16,000-byte head is fine."""
    runtime = await proxy()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(runtime))
    try:
        writer.write(padded_upgrade(16_000))
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    assert parse_answer(head).status == 101
    assert backend.accepted == 1
    assert len(backend.requests) == 1


async def test_head_over_a_lowered_max_header_bytes_is_answered_431(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy(limits={"maxHeaderBytes": 1024})
    answer = parse_answer(await raw_request(port_of(runtime), padded_upgrade(1500)))
    assert_short_error(answer, 431)
    await assert_never_reached_backend(runtime, backend)


async def test_slow_head_is_answered_408_after_the_handshake_timeout(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy(limits={"handshakeTimeoutSeconds": 0.5})
    half = upgrade_request()[:40]
    loop = asyncio.get_running_loop()
    started = loop.time()
    data = await raw_request(port_of(runtime), half, read_timeout=3)
    elapsed = loop.time() - started
    assert_short_error(parse_answer(data), 408)
    assert 0.4 <= elapsed < 2.5, elapsed
    await assert_never_reached_backend(runtime, backend)


def read_answer(port: int, data: bytes) -> Awaitable[bytes]:
    return raw_request(port, data, read_timeout=3)


def without_date(answer: HttpAnswer) -> list[tuple[str, str]]:
    return [(name, value) for name, value in answer.headers.raw_items() if name != "Date"]


async def test_backend_404_with_body_goes_back_to_the_client_as_is(dataplane: Any) -> None:
    def not_found(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(HTTPStatus.NOT_FOUND, "no such room: lobby\n")
        response.headers["X-Room"] = "lobby"
        return response

    backend = CountingBackend(answer=not_found)
    await backend.start()
    try:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url(runtime, path="/rooms/lobby")):
                pass
        response = caught.value.response
        assert response.status_code == 404
        assert response.body == b"no such room: lobby\n"
        assert response.headers["X-Room"] == "lobby"
        assert [request.path for request in backend.requests] == ["/rooms/lobby"]

        via_proxy = parse_answer(await read_answer(port_of(runtime), upgrade_request()))
        direct = parse_answer(await read_answer(backend.port, upgrade_request()))
        assert via_proxy.status == direct.status == 404
        assert without_date(via_proxy) == without_date(direct)
        assert via_proxy.body == direct.body
        upgrades = runtime.metrics.registry.get_sample_value(
            "wslb_dataplane_upgrades_total", {"listener": "ws", "code": "404"}
        )
        assert upgrades == 2
    finally:
        await backend.stop()


async def test_backend_403_with_headers_goes_back_to_the_client_as_is(dataplane: Any) -> None:
    def forbidden(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(HTTPStatus.FORBIDDEN, "token expired\n")
        response.headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
        return response

    backend = CountingBackend(answer=forbidden)
    await backend.start()
    try:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        with pytest.raises(InvalidStatus) as caught:
            async with connect(url(runtime)):
                pass
        response = caught.value.response
        assert response.status_code == 403
        assert response.body == b"token expired\n"
        assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
        assert "Server: wslb" not in str(response.headers)
    finally:
        await backend.stop()


async def test_two_host_headers_are_answered_400(proxy: Proxy, backend: CountingBackend) -> None:
    runtime = await proxy()
    doubled = upgrade_request(extra="Host: evil.example.com\r\n")
    assert_short_error(parse_answer(await raw_request(port_of(runtime), doubled)), 400)
    await assert_never_reached_backend(runtime, backend)


async def test_plain_get_over_tls_is_proxied(
    dataplane: Any, backend: CountingBackend, tls: Any
) -> None:
    config = listener(
        "wss",
        protocol="HTTPS",
        tls={"certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}]},
        backends={"endpoints": [backend.endpoint]},
    )
    runtime = await dataplane(snapshot(config))
    port = runtime.listeners["wss"].config.port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context, server_hostname="localhost"
    )
    try:
        writer.write(request_bytes("GET / HTTP/1.1", "Host: localhost"))
        async with asyncio.timeout(3):
            head = await reader.readuntil(b"\r\n\r\n")
            answer = parse_answer(head)
            answer.body = await reader.readexactly(int(answer.headers["Content-Length"]))
    finally:
        writer.close()
    assert answer.status == 426  # the websockets backend's own answer to a plain GET
    assert answer.headers["Via"] == "1.1 wslb"
    assert backend.accepted == 1


def rejection_count(runtime: Runtime, reason: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_rejections_total", {"listener": "ws", "reason": reason}
    )
    return value or 0.0


def upgrade_count(runtime: Runtime, code: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_upgrades_total", {"listener": "ws", "code": code}
    )
    return value or 0.0


async def test_handshake_rejections_are_counted_by_reason_and_status(
    proxy: Proxy, backend: CountingBackend
) -> None:
    runtime = await proxy(limits={"handshakeTimeoutSeconds": 0.5, "maxHeaderBytes": 1024})
    port = port_of(runtime)
    await raw_request(port, request_bytes("GET / HTTP/1.1", "Host: 127.0.0.1", "Connection: close"))
    await raw_request(port, b"nonsense\r\n\r\n")
    await raw_request(port, padded_upgrade(1500))
    await raw_request(port, upgrade_request()[:30], read_timeout=3)

    # The plain GET was proxied (not refused); the garbage is refused as a plain request,
    # so it counts as a rejection but not as an upgrade.
    assert rejection_count(runtime, "bad_request") == 1
    assert rejection_count(runtime, "header_too_large") == 1
    assert rejection_count(runtime, "handshake_timeout") == 1
    assert {code: upgrade_count(runtime, code) for code in ("400", "426", "431", "408", "101")} == {
        "400": 0,
        "426": 0,
        "431": 1,
        "408": 1,
        "101": 0,
    }


async def test_head_trickled_a_byte_at_a_time_still_times_out_with_408(
    proxy: Proxy, backend: CountingBackend
) -> None:
    """The handshake timeout bounds the whole head, not the gap between bytes (slowloris)."""
    runtime = await proxy(limits={"handshakeTimeoutSeconds": 0.5})
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(runtime))
    started = loop.time()
    data = b""
    try:
        for byte in upgrade_request()[:-2]:
            if loop.time() - started > 3:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                # read(n) loses nothing when cancelled while waiting; read(-1) could.
                data = await asyncio.wait_for(reader.read(65536), timeout=0.05)
                async with asyncio.timeout(3):
                    data += await reader.read(-1)
                break
    finally:
        writer.close()
    elapsed = loop.time() - started
    assert_short_error(parse_answer(data), 408)
    assert elapsed < 1.5, elapsed
    await assert_never_reached_backend(runtime, backend)


async def test_too_many_header_lines_are_answered_431(
    proxy: Proxy, backend: CountingBackend
) -> None:
    """129 short headers fit in 16 KiB but exceed the parser's header count."""
    runtime = await proxy()
    many = upgrade_request(extra="".join(f"X-{index}: y\r\n" for index in range(129)))
    assert len(many) < 16 * 1024
    answer = parse_answer(await raw_request(port_of(runtime), many))
    assert_short_error(answer, 431)
    await assert_never_reached_backend(runtime, backend)
