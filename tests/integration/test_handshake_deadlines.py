"""Handshake deadlines live on the listener's timing wheel (no loop timer per connection):
they still fire, and a connection leaves the wheel when it no longer needs one, so the
wheel never holds connections that ended or moved on to plain HTTP."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from dataplane.runtime import Runtime
from tests.integration.conftest import (
    listener,
    raw_request,
    snapshot,
    upgrade_request,
    url,
    wait_until,
)

pytestmark = pytest.mark.integration

LONG = 30.0  # a handshake deadline far beyond the test: only an explicit unfiling clears it


async def start(backends: Any, dataplane: Any, **limits: float) -> Runtime:
    (backend,) = await backends(1)
    config = listener(backends={"endpoints": [backend.endpoint]}, limits=limits)
    runtime: Runtime = await dataplane(snapshot(config))
    return runtime


def filed(runtime: Runtime) -> int:
    return len(runtime.listeners["ws"].wheel)


async def test_ended_refused_and_plain_http_connections_leave_the_wheel(
    backends: Any, dataplane: Any
) -> None:
    runtime = await start(
        backends, dataplane, handshakeTimeoutSeconds=LONG, connectTimeoutSeconds=LONG
    )
    async with connect(url(runtime), ping_interval=None) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
        assert filed(runtime) == 1  # the tunnel's idle deadline
    bad = upgrade_request().replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7")
    assert b" 426 " in (await raw_request(runtime.listeners["ws"].config.port, bad))[:20]
    get = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert (await raw_request(runtime.listeners["ws"].config.port, get)).startswith(
        b"HTTP/1.1 200 "
    )
    await wait_until(lambda: not runtime.listeners["ws"].connections)
    assert filed(runtime) == 0


async def test_a_keep_alive_http_connection_is_not_on_the_wheel(
    backends: Any, dataplane: Any
) -> None:
    """Plain HTTP keeps its own deadlines (http_proxy): the head's entry goes at once."""
    runtime = await start(backends, dataplane, handshakeTimeoutSeconds=LONG)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.listeners["ws"].config.port)
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
        assert len(runtime.listeners["ws"].connections) == 1
        assert filed(runtime) == 0
    finally:
        writer.close()


async def test_a_silent_client_is_answered_408_by_the_wheel(backends: Any, dataplane: Any) -> None:
    runtime = await start(backends, dataplane, handshakeTimeoutSeconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.listeners["ws"].config.port)
    try:
        await wait_until(lambda: filed(runtime) == 1)  # filed at accept
        async with asyncio.timeout(3):
            answer = await reader.read(-1)
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert filed(runtime) == 0


@pytest.fixture
def unanswered_backend() -> Iterator[int]:
    """A port whose SYNs go unanswered: a listener with a full accept queue (backlog 0,
    one connection never accepted), so a dial to it stays in progress."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    port = int(server.getsockname()[1])
    fillers = []
    for _ in range(2):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    yield port
    for item in (*fillers, server):
        item.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_client_leaving_during_the_dial_closes_the_dial_socket(
    dataplane: Any, unanswered_backend: int, caplog: pytest.LogCaptureFixture
) -> None:
    """The dial is uvloop's connect coroutine driven without a Task: giving it up (the
    client left) must close its socket, as cancelling a Task did."""
    config = listener(
        backends={"endpoints": [{"address": "127.0.0.1", "port": unanswered_backend}]},
        limits={"connectTimeoutSeconds": 30},
    )
    runtime: Runtime = await dataplane(snapshot(config))
    site = runtime.listeners["ws"]
    (endpoint,) = site.endpoints.values()
    before = open_fds()
    with caplog.at_level(logging.ERROR):
        _reader, writer = await asyncio.open_connection("127.0.0.1", site.config.port)
        writer.write(upgrade_request())
        await wait_until(lambda: endpoint.active == 1)  # dialling, the connect pending
        assert open_fds() >= before + 3  # the client's socket, the accepted one, the dial's
        writer.close()
        await wait_until(lambda: not site.connections)
        await wait_until(lambda: open_fds() == before)
        gc.collect()  # a waiter's unretrieved exception is logged when it is freed
    assert endpoint.active == 0
    assert filed(runtime) == 0
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_dial_that_never_connects_times_out_and_closes_its_socket(
    dataplane: Any, unanswered_backend: int
) -> None:
    config = listener(
        backends={"endpoints": [{"address": "127.0.0.1", "port": unanswered_backend}]},
        limits={"connectTimeoutSeconds": 0.3, "connectRetries": 0},
    )
    runtime: Runtime = await dataplane(snapshot(config))
    site = runtime.listeners["ws"]
    before = open_fds()
    answer = await raw_request(site.config.port, upgrade_request(), read_timeout=5)
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:40]
    await wait_until(lambda: open_fds() == before)


async def test_a_408_comes_on_time_while_a_tunnel_is_open(backends: Any, dataplane: Any) -> None:
    """A tunnel's entry, re-filed for its idle deadline when its first slot comes due,
    must not hold back the silent client's earlier 408."""
    runtime = await start(
        backends, dataplane, handshakeTimeoutSeconds=1.0, connectTimeoutSeconds=0.2
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection("127.0.0.1", runtime.listeners["ws"].config.port)
    try:
        await asyncio.sleep(0.3)
        async with connect(url(runtime), ping_interval=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            async with asyncio.timeout(5):
                answer = await reader.read(-1)
            took = loop.time() - started
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert took < 1.4, took


async def test_a_connect_timeout_comes_on_time_while_a_tunnel_is_open(
    backends: Any, dataplane: Any, unanswered_backend: int, caplog: pytest.LogCaptureFixture
) -> None:
    (backend,) = await backends(1)
    endpoints = [backend.endpoint, {"address": "127.0.0.1", "port": unanswered_backend}]
    config = listener(
        backends={"endpoints": endpoints},
        limits={"connectTimeoutSeconds": 0.5, "connectRetries": 0},
    )
    runtime: Runtime = await dataplane(snapshot(config))
    site = runtime.listeners["ws"]
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.ERROR):
        async with connect(url(runtime), ping_interval=None) as ws:  # to the echo backend
            await ws.send("hi")
            assert await ws.recv() == "hi"
            await asyncio.sleep(0.2)  # the tunnel's first slot comes before the dial's
            started = loop.time()
            answer = await raw_request(site.config.port, upgrade_request(), read_timeout=5)
            took = loop.time() - started
        gc.collect()  # a waiter's unretrieved exception is logged when it is freed
    assert answer.startswith(b"HTTP/1.1 502 "), answer[:40]
    assert took < 0.9, took
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
