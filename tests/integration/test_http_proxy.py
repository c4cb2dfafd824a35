"""Plain HTTP/1.1 through a listener: keep-alive, pooling, bodies, pipelining, errors.

Real sockets on loopback: a raw client, the data plane under uvloop, and small asyncio
HTTP backends (tests/integration/http_backend.py) that record what reached them.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
from typing import Any

import pytest

from dataplane.access_log import AccessLog
from dataplane.listener import ListenerRuntime
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.logs import LogFormat
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import StartHttp as Start
from tests.integration.conftest import listener, snapshot, wait_until
from tests.integration.http_backend import (
    Client,
    HttpBackend,
    Seen,
    get,
    response,
)

pytestmark = pytest.mark.integration


async def proxy_for(dataplane: Any, *backends: HttpBackend, **fields: Any) -> int:
    config = listener(backends={"endpoints": [b.endpoint for b in backends]}, **fields)
    runtime: Runtime = await dataplane(snapshot(config))
    return runtime.listeners["ws"].config.port


async def test_keep_alive_requests_share_one_backend_connection(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    try:
        for number in range(5):
            client.send(get(f"/item/{number}"))
            answer = await client.answer()
            assert answer.status == 200
            assert answer.body == f"GET /item/{number} 0".encode()
            assert answer.field("Via") == "1.1 wslb"
            assert answer.field("Connection") is None  # kept alive
    finally:
        client.close()
    assert [seen.target for seen in backend.requests] == [f"/item/{n}" for n in range(5)]
    assert backend.accepted == 1  # the pooled connection carried every request
    assert {seen.connection for seen in backend.requests} == {1}


async def test_pooled_connection_is_reused_by_another_client(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    for _ in range(3):
        client = await Client.connect(port)
        client.send(get("/", extra="Connection: close\r\n"))
        answer = await client.answer()
        assert answer.status == 200
        assert answer.field("Connection") == "close"
        assert await client.closed()
        client.close()
    assert backend.accepted == 1


async def test_forwarded_fields_and_hop_by_hop_fields(dataplane: Any, http_backend: Start) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(
        b"GET /x?q=1 HTTP/1.1\r\nHost: app.example\r\nConnection: X-Secret\r\n"
        b"X-Secret: drop me\r\nKeep-Alive: timeout=5\r\nX-Forwarded-For: 10.9.9.9\r\n\r\n"
    )
    assert (await client.answer()).status == 200
    client.close()
    seen = backend.requests[0]
    assert seen.target == "/x?q=1"
    assert seen.field("X-Secret") is None
    assert seen.field("Keep-Alive") is None
    assert seen.field("Connection") is None
    assert seen.field("Via") == "1.1 wslb"
    assert seen.field("X-Forwarded-For") == "10.9.9.9, 127.0.0.1"
    assert seen.field("X-Forwarded-Proto") == "http"
    assert seen.field("Host") == "app.example"


async def test_pipelined_requests_are_answered_in_order(
    dataplane: Any, http_backend: Start
) -> None:
    async def slow_first(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        if seen.target == "/1":
            await asyncio.sleep(0.2)  # the backend's own delay: the order must still hold
        writer.write(response(200, seen.target.encode()))

    backend = await http_backend(handler=slow_first)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    post = b"POST /3 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
    client.send(get("/1") + get("/2") + post)
    bodies = [(await client.answer()).body for _ in range(3)]
    client.close()
    assert bodies == [b"/1", b"/2", b"/3"]
    assert backend.requests[2].body == b"abc"


async def test_chunked_upload_and_chunked_download(dataplane: Any, http_backend: Start) -> None:
    async def chunked(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"alpha", b"beta", seen.body):
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    backend = await http_backend(handler=chunked)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(
        b"POST /up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\nTrailer-X: y\r\n\r\n"
    )
    answer = await client.answer()
    assert answer.status == 200
    assert answer.field("Transfer-Encoding") == "chunked"
    assert answer.body == b"alphabetaabcdefg"
    client.send(get("/again"))
    assert (await client.answer()).status == 200  # the connection survived the chunked body
    client.close()
    assert backend.requests[0].body == b"abcdefg"
    assert backend.requests[0].field("Transfer-Encoding") == "chunked"
    assert backend.requests[0].field("Trailer-X") is None


async def test_content_length_upload(dataplane: Any, http_backend: Start) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    body = b"x" * 300_000
    client.send(b"PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    answer = await client.answer()
    client.close()
    assert answer.body == b"PUT /f 300000"
    assert backend.requests[0].body == body


async def test_body_read_until_the_backend_closes_is_chunked_for_the_client(
    dataplane: Any, http_backend: Start
) -> None:
    async def until_close(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nstreamed to the end")
        writer.close()

    backend = await http_backend(handler=until_close)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(get("/"))
    answer = await client.answer()
    assert answer.body == b"streamed to the end"
    assert answer.field("Transfer-Encoding") == "chunked"
    client.send(get("/"))
    assert (await client.answer()).body == b"streamed to the end"
    client.close()
    assert backend.accepted == 2  # a read-to-close connection is never pooled


async def test_head_204_and_304_have_no_body(dataplane: Any, http_backend: Start) -> None:
    async def answers(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        if seen.method == "HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        elif seen.target == "/204":
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 1000\r\nETag: x\r\n\r\n")

    backend = await http_backend(handler=answers)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n")
    head = await client.answer("HEAD")
    assert (head.status, head.field("Content-Length")) == (200, "1000")
    client.send(get("/204"))
    no_content = await client.answer()
    assert no_content.status == 204
    assert no_content.field("Transfer-Encoding") is None
    client.send(get("/304"))
    not_modified = await client.answer()
    assert not_modified.status == 304
    client.send(get("/304"))
    assert (await client.answer()).status == 304  # no stray body bytes in between
    client.close()
    assert backend.accepted == 1


async def test_expect_100_continue_is_relayed(dataplane: Any, http_backend: Start) -> None:
    async def continue_first(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        body = await reader.readexactly(int(seen.field("Content-Length") or 0))
        writer.write(response(201, body))

    backend = await http_backend(handler=continue_first, read_bodies=False)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(b"POST /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    interim = await client.answer()
    assert interim.status == 100  # before any body byte was sent
    client.send(b"hello")
    final = await client.answer()
    client.close()
    assert (final.status, final.body) == (201, b"hello")
    assert backend.requests[0].field("Expect") == "100-continue"


async def test_no_ready_backend_is_503(dataplane: Any) -> None:
    port = await proxy_for(dataplane)
    client = await Client.connect(port)
    client.send(get())
    answer = await client.answer()
    assert answer.status == 503
    assert await client.closed()
    client.close()


async def test_unreachable_backend_is_502(dataplane: Any, http_backend: Start) -> None:
    backend = await http_backend()
    endpoint = backend.endpoint
    await backend.stop()
    config = listener(backends={"endpoints": [endpoint]}, limits={"connectRetries": 0})
    runtime: Runtime = await dataplane(snapshot(config))
    client = await Client.connect(runtime.listeners["ws"].config.port)
    client.send(get())
    assert (await client.answer()).status == 502
    client.close()


async def test_backend_that_does_not_answer_in_time_is_504(
    dataplane: Any, http_backend: Start
) -> None:
    async def silent(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)

    backend = await http_backend(handler=silent)
    port = await proxy_for(dataplane, backend, http={"responseHeadTimeoutSeconds": 0.3})
    client = await Client.connect(port)
    client.send(get())
    answer = await client.answer(timeout=3)
    assert answer.status == 504
    assert await client.closed()
    client.close()


async def test_idle_keep_alive_connection_is_closed(dataplane: Any, http_backend: Start) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend, http={"keepAliveTimeoutSeconds": 0.3})
    client = await Client.connect(port)
    client.send(get())
    assert (await client.answer()).status == 200
    assert await client.closed(timeout=3)
    client.close()


async def test_max_requests_per_connection_closes_after_the_last(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend, http={"maxRequestsPerConnection": 2})
    client = await Client.connect(port)
    client.send(get())
    assert (await client.answer()).field("Connection") is None
    client.send(get())
    last = await client.answer()
    assert last.field("Connection") == "close"
    assert await client.closed()
    client.close()


async def test_body_over_max_body_bytes_is_413_and_never_reaches_the_backend(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend, http={"maxBodyBytes": 10})
    client = await Client.connect(port)
    client.send(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")
    assert (await client.answer()).status == 413
    assert await client.closed()
    client.close()
    assert backend.accepted == 0


async def test_slow_request_head_is_408(dataplane: Any, http_backend: Start) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend, http={"requestHeadTimeoutSeconds": 0.3})
    client = await Client.connect(port)
    client.send(get())
    assert (await client.answer()).status == 200
    client.send(b"GET / HTTP/1.1\r\nHo")  # a second head that never completes
    assert (await client.answer(timeout=3)).status == 408
    client.close()
    assert len(backend.requests) == 1


async def test_upgrade_after_plain_requests_on_one_connection(
    dataplane: Any, http_backend: Start, backends: Any
) -> None:
    [echo] = await backends(1)
    config = listener(backends={"endpoints": [echo.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    client = await Client.connect(port)
    client.send(get("/page", extra="Connection: keep-alive\r\n"))
    first = await client.answer()
    assert first.status == 426  # the echo backend's answer to a plain GET, relayed
    client.send(
        b"GET /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    switching = await client.answer()
    assert switching.status == 101
    client.send(b"\x81\x85" + b"\x00\x00\x00\x00" + b"hello")  # a masked text frame
    async with asyncio.timeout(5):
        frame = await client.reader.readexactly(7)
    client.close()
    assert frame == b"\x81\x05hello"


async def test_drain_closes_a_keep_alive_connection_after_its_answer(
    dataplane: Any, http_backend: Start
) -> None:
    gate = asyncio.Event()

    async def held(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        if seen.target == "/held":
            await gate.wait()
        writer.write(response(200, b"ok"))

    backend = await http_backend(handler=held)
    config = listener(backends={"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    idle = await Client.connect(port)
    idle.send(get("/"))
    assert (await idle.answer()).status == 200
    busy = await Client.connect(port)
    busy.send(get("/held"))
    await wait_until(lambda: len(backend.requests) == 2)
    # The listener leaves the config: its connections drain.
    await runtime.apply(parse_snapshot(snapshot(version="2")))
    assert await idle.closed()  # idle between requests: closed at once
    gate.set()
    answer = await busy.answer()
    assert (answer.status, answer.field("Connection")) == (200, "close")
    assert await busy.closed()
    idle.close()
    busy.close()


@pytest.mark.parametrize("forwarding", [True, False])
async def test_one_access_log_line_per_http_request(http_backend: Start, forwarding: bool) -> None:
    backend = await http_backend()
    stream = io.StringIO()
    access_log = AccessLog(LogFormat.JSON, stream=stream)
    access_log.start()
    runtime = Runtime(Metrics(), access_log=access_log)
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        accessLog={"includeQuery": False},
        forwardedHeaders={"enabled": forwarding},
    )
    await runtime.apply(parse_snapshot(snapshot(config)))
    try:
        client = await Client.connect(runtime.listeners["ws"].config.port)
        client.send(get("/a?token=x", host="shop.example"))
        assert (await client.answer()).status == 200
        client.send(
            b"PUT /b HTTP/1.1\r\nHost: shop.example\r\nX-Forwarded-For: 203.0.113.9\r\n"
            b"Content-Length: 4\r\n\r\nbody"
        )
        assert (await client.answer()).status == 200
        client.close()
        await wait_until(lambda: len(runtime.listeners["ws"].connections) == 0)
    finally:
        await runtime.shutdown(drain_timeout=0)
        access_log.flush()
        access_log.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["kind"], line["method"], line["path"]) for line in lines] == [
        ("http", "GET", "/a"),
        ("http", "PUT", "/b"),
    ]
    assert lines[1]["bytes_from_client"] == 4
    assert lines[0]["host"] == "shop.example"
    assert lines[0]["rule"] == "default"
    assert lines[0]["backend"] == f"127.0.0.1:{backend.port}"
    assert all(line["status"] == 200 for line in lines)
    # the chain the backend got, as the WebSocket line logs it: client address appended
    # when forwarded headers are on, the client's own chain when they are off
    chains = [line["forwarded_for"] for line in lines]
    expected = ["127.0.0.1", "203.0.113.9, 127.0.0.1"] if forwarding else [None, "203.0.113.9"]
    assert chains == expected


async def test_connection_the_backend_closed_while_pooled_is_not_reused(
    dataplane: Any, http_backend: Start
) -> None:
    async def one_shot(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(response(200, b"once"))  # says nothing of closing, then closes
        await writer.drain()
        writer.close()

    backend = await http_backend(handler=one_shot)
    config = listener(backends={"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    group = runtime.listeners["ws"].default
    client = await Client.connect(runtime.listeners["ws"].config.port)
    for _ in range(3):
        client.send(get())
        assert (await client.answer()).body == b"once"
        # pooled, then dropped from the pool when the backend's FIN arrives
        await wait_until(lambda: len(group.pool) == 0, timeout=2)  # under the 4 s pool age
    client.close()
    assert backend.accepted == 3
    errors = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_http_backend_errors_total",
        {"listener": "ws", "rule": "default", "kind": "reset"},
    )
    assert errors is None  # no request was sent on the closed connection and retried


async def test_client_gone_mid_answer_closes_the_backend_connection(
    dataplane: Any, http_backend: Start
) -> None:
    async def endless(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        if seen.target == "/small":
            writer.write(response(200, b"small"))
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n")
        for _ in range(100):
            writer.write(b"x" * 65536)
            await writer.drain()

    backend = await http_backend(handler=endless)
    config = listener(backends={"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    client = await Client.connect(port)
    client.send(get("/big"))
    await client.reader.readuntil(b"\r\n\r\n")
    client.writer.transport.abort()
    await wait_until(lambda: len(runtime.listeners["ws"].connections) == 0)
    second = await Client.connect(port)
    second.send(get("/small"))
    assert (await second.answer()).body == b"small"
    second.close()
    assert backend.accepted == 2  # the half-read connection was not pooled
    idle = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_http_pool_idle_connections", {"listener": "ws"}
    )
    assert idle == 1


async def client_leaves_before_the_answer(dataplane: Any, http_backend: Start) -> Runtime:
    """A GET whose backend never answers, and a client that resets meanwhile."""
    release = asyncio.Event()

    async def hang(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    backend = await http_backend(handler=hang)
    config = listener(backends={"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    site = runtime.listeners["ws"]
    client = await Client.connect(site.config.port)
    client.send(get("/wait"))
    await wait_until(lambda: len(backend.requests) == 1)
    sock = client.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.writer.transport.abort()  # a reset (a FIN would be a half-close: answer due)
    await wait_until(lambda: not site.connections)
    release.set()
    return runtime


async def test_client_gone_before_the_answer_reaches_count_request_with_its_reason(
    dataplane: Any, http_backend: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Status 0 (no answer) and reason client_gone go to the listener; what it counts is
    listener.py's (see the next test)."""
    calls: list[tuple[str, bytes, int, str]] = []

    def record(self: Any, rule: str, method: bytes, status: int, duration: float, why: str) -> None:
        calls.append((rule, method, status, why))
        original(self, rule, method, status, duration, why)

    original = ListenerRuntime.count_request
    monkeypatch.setattr(ListenerRuntime, "count_request", record)
    await client_leaves_before_the_answer(dataplane, http_backend)
    assert calls == [("default", b"GET", 0, "client_gone")]


async def test_client_gone_before_the_answer_counts_as_a_rejection(
    dataplane: Any, http_backend: Start
) -> None:
    runtime = await client_leaves_before_the_answer(dataplane, http_backend)
    found = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_rejections_total", {"listener": "ws", "reason": "client_gone"}
    )
    assert found == 1
    # no answer, so no status class to count it under
    assert runtime.listeners["ws"].request_counts.requests == {}


async def test_http_1_0_client_gets_a_chunked_answer_read_to_close(
    dataplane: Any, http_backend: Start
) -> None:
    async def chunked(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        )

    backend = await http_backend(handler=chunked)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(b"GET / HTTP/1.0\r\n\r\n")
    answer = await client.answer()
    client.close()
    assert answer.status == 200
    assert answer.field("Transfer-Encoding") is None  # HTTP/1.0 knows no chunks
    assert answer.field("Connection") == "close"
    assert answer.body == b"hello"


async def test_final_answer_instead_of_100_continue_skips_the_body(
    dataplane: Any, http_backend: Start
) -> None:
    async def refuse(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(response(401, b"no"))

    backend = await http_backend(handler=refuse, read_bodies=False)
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(b"PUT /u HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    answer = await client.answer()
    assert (answer.status, answer.body) == (401, b"no")
    assert await client.closed()  # the unsent body leaves the connection unusable
    client.close()


async def test_client_half_close_after_its_requests_gets_every_answer_then_a_close(
    dataplane: Any, http_backend: Start
) -> None:
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(get("/1") + get("/2"))
    client.writer.write_eof()  # shutdown(SHUT_WR), as some clients do after sending
    assert (await client.answer()).body == b"GET /1 0"
    assert (await client.answer()).body == b"GET /2 0"
    assert await client.closed(timeout=3)  # not left open until the keep-alive timeout
    client.close()


async def test_client_half_close_inside_a_body_ends_the_request_and_its_backend(
    dataplane: Any, http_backend: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The body can never be completed: waiting would hold both connections forever
    (the backend waits for the rest, the answer for the backend)."""
    calls: list[tuple[int, str]] = []

    def record(self: Any, rule: str, method: bytes, status: int, duration: float, why: str) -> None:
        calls.append((status, why))
        original(self, rule, method, status, duration, why)

    original = ListenerRuntime.count_request
    monkeypatch.setattr(ListenerRuntime, "count_request", record)
    backend = await http_backend()
    runtime: Runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    )
    site = runtime.listeners["ws"]
    client = await Client.connect(site.config.port)
    client.send(b"POST /cut HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\n" + b"x" * 40)
    await wait_until(lambda: backend.accepted == 1)
    client.writer.write_eof()
    assert await client.closed(timeout=3)
    client.close()
    await wait_until(lambda: not site.connections)
    assert [e.active for e in site.default.endpoints.values()] == [0]
    assert calls == [(0, "client_gone")]
    assert backend.requests == []  # the backend never got a whole request


async def test_client_half_close_inside_a_body_still_gets_an_answer_under_way(
    dataplane: Any, http_backend: Start
) -> None:
    """A backend that answers before reading the body: its answer is relayed whole."""
    finish = asyncio.Event()

    async def early(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        await writer.drain()
        await finish.wait()
        writer.write(b"hello")

    def half_closed(site: Any) -> bool:
        """The data plane has seen the FIN (or closed the connection)."""
        sessions = [c.http for c in site.connections if c.http is not None]
        return not site.connections or any(session.closing for session in sessions)

    backend = await http_backend(handler=early, read_bodies=False)
    runtime: Runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    )
    site = runtime.listeners["ws"]
    client = await Client.connect(site.config.port)
    client.send(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nxx")
    async with asyncio.timeout(5):
        head = await client.reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    client.writer.write_eof()  # inside the body, after the answer began
    await wait_until(lambda: half_closed(site))
    finish.set()
    async with asyncio.timeout(5):
        assert await client.reader.readexactly(5) == b"hello"
    assert await client.closed()  # the unsent body leaves the connection unusable
    client.close()


async def test_https_listener_proxies_plain_requests_with_forwarded_proto_https(
    dataplane: Any, http_backend: Start, tls: Any
) -> None:
    backend = await http_backend()
    config = listener(
        protocol="HTTPS",
        tls={"certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}]},
        backends={"endpoints": [backend.endpoint]},
    )
    runtime: Runtime = await dataplane(snapshot(config))
    port = runtime.listeners["ws"].config.port
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls.client_context, server_hostname="localhost"
    )
    client = Client(reader, writer)
    for target in ("/a", "/b"):
        client.send(get(target, host="localhost"))
        assert (await client.answer()).body == f"GET {target} 0".encode()
    client.send(get("/c", host="localhost", extra="Connection: close\r\n"))
    assert (await client.answer()).status == 200
    assert await client.closed()
    client.close()
    assert [seen.field("X-Forwarded-Proto") for seen in backend.requests] == ["https"] * 3
    assert backend.accepted == 1


async def test_many_pipelined_requests_are_all_answered_in_order(
    dataplane: Any, http_backend: Start
) -> None:
    """More than the read-ahead bound (64 requests): reading pauses and resumes."""
    backend = await http_backend()
    port = await proxy_for(dataplane, backend)
    client = await Client.connect(port)
    client.send(b"".join(get(f"/{n}") for n in range(300)))
    bodies = [(await client.answer()).body for _ in range(300)]
    client.send(get("/after"))  # read only if the pause was lifted
    last = await client.answer()
    client.close()
    assert bodies == [f"GET /{n} 0".encode() for n in range(300)]
    assert last.body == b"GET /after 0"
    assert backend.accepted == 1
