"""Handshake deadlines live on the listener's timing wheel (no loop timer per connection):
they still fire, and a connection leaves the wheel when it no longer needs one, so the
wheel never holds connections that ended or moved on to plain HTTP."""

from __future__ import annotations

import asyncio
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
