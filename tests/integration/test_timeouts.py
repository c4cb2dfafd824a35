"""Idle timeout, keepalive and message-size limits, end to end with short settings."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import listener, snapshot, url, wait_until

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


async def test_idle_connection_gets_close_1001_after_idle_timeout(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(
        snapshot(listener(idleTimeoutSeconds=1, backends={"endpoints": [backend.endpoint]}))
    )
    async with connect(url(runtime), ping_interval=None) as ws:
        started = time.monotonic()
        await asyncio.wait_for(ws.wait_closed(), 5)
        elapsed = time.monotonic() - started
    assert ws.close_code == 1001
    assert ws.close_reason == "idle timeout"
    assert 0.9 <= elapsed < 3
    assert (
        runtime.metrics.registry.get_sample_value(
            "wslb_dataplane_idle_timeouts_total", {"listener": "ws"}
        )
        == 1
    )


async def test_client_frames_reset_the_idle_deadline(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(
        snapshot(listener(idleTimeoutSeconds=1, backends={"endpoints": [backend.endpoint]}))
    )
    async with connect(url(runtime), ping_interval=None) as ws:
        for _ in range(5):  # 2.5 s of traffic, well past one idle timeout
            await asyncio.sleep(0.5)
            await ws.send("tick")
            assert await ws.recv() == "tick"
        started = time.monotonic()
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert time.monotonic() - started >= 0.9
    assert ws.close_code == 1001


async def test_backend_frames_reset_the_idle_deadline(dataplane: Any) -> None:
    async def ticker(connection: ServerConnection) -> None:
        for _ in range(5):
            await connection.send("tick")
            await asyncio.sleep(0.5)
        await connection.wait_closed()

    async with serve(ticker, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(
            idleTimeoutSeconds=1, backends={"endpoints": [{"address": "127.0.0.1", "port": port}]}
        )
        runtime = await dataplane(snapshot(config))
        async with connect(url(runtime), ping_interval=None) as ws:
            ticks = [await ws.recv() for _ in range(5)]
            assert ticks == ["tick"] * 5
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001


async def test_keepalive_holds_an_idle_connection_past_the_idle_timeout(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = listener(
        idleTimeoutSeconds=1,
        keepalive={"intervalSeconds": 0.3, "timeoutSeconds": 0.5},
        backends={"endpoints": [backend.endpoint]},
    )
    runtime = await dataplane(snapshot(config))
    async with connect(url(runtime), ping_interval=None) as ws:
        await asyncio.sleep(2.5)  # the behaviour under test is the passing of time
        await ws.send("still here")
        assert await ws.recv() == "still here"
    assert ws.close_code == 1000


async def _silent_backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accepts the upgrade, then never answers anything (not even pings)."""
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest()).decode()  # noqa: S324
    writer.write(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
    )
    while await reader.read(65536):
        pass
    writer.close()


async def test_keepalive_closes_1011_when_the_backend_stops_answering(dataplane: Any) -> None:
    server = await asyncio.start_server(_silent_backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = listener(
        idleTimeoutSeconds=30,
        keepalive={"intervalSeconds": 0.3, "timeoutSeconds": 0.3},
        backends={"endpoints": [{"address": "127.0.0.1", "port": port}]},
    )
    runtime = await dataplane(snapshot(config))
    try:
        async with connect(url(runtime), ping_interval=None) as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1011
        assert ws.close_reason == "keepalive timeout"
    finally:
        server.close()


async def test_oversized_message_closes_both_sides_with_1009(dataplane: Any) -> None:
    backend_close: list[int | None] = []

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass
        backend_close.append(connection.close_code)

    async with serve(echo, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(
            limits={"maxMessageBytes": 1000},
            backends={"endpoints": [{"address": "127.0.0.1", "port": port}]},
        )
        runtime = await dataplane(snapshot(config))
        async with connect(url(runtime), ping_interval=None, compression=None) as ws:
            await ws.send(b"a" * 900)
            assert await ws.recv() == b"a" * 900
            await ws.send(b"b" * 2000)
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
        await wait_until(lambda: bool(backend_close))
        assert backend_close == [1009]


async def test_oversized_message_over_many_reads_closes_both_sides_with_1009(
    dataplane: Any,
) -> None:
    """A 2 MiB message against the default 1 MiB limit spans many socket reads."""
    backend_close: list[int | None] = []

    async def echo(connection: ServerConnection) -> None:
        try:
            async for message in connection:
                await connection.send(message)
        except ConnectionClosed:
            pass
        backend_close.append(connection.close_code)

    async with serve(echo, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]})
        runtime = await dataplane(snapshot(config))
        async with connect(url(runtime), ping_interval=None, compression=None) as ws:
            await ws.send(b"z" * (2 * 1024 * 1024))
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
        await wait_until(lambda: bool(backend_close))
        assert backend_close == [1009]


async def test_oversized_message_from_the_backend_closes_both_sides_with_1009(
    dataplane: Any,
) -> None:
    backend_close: list[int | None] = []

    async def big_sender(connection: ServerConnection) -> None:
        try:
            await connection.send(b"y" * (2 * 1024 * 1024))
            await connection.wait_closed()
        except ConnectionClosed:
            pass
        backend_close.append(connection.close_code)

    async with serve(big_sender, "127.0.0.1", 0, max_size=None, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]})
        runtime = await dataplane(snapshot(config))
        async with connect(url(runtime), ping_interval=None, max_size=None) as ws:
            await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1009
        await wait_until(lambda: bool(backend_close))
        assert backend_close == [1009]
