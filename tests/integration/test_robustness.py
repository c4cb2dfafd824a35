"""Hostile or broken peers: every path answers or closes cleanly and releases its slot."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.integration.conftest import (
    listener,
    raw_request,
    snapshot,
    upgrade_request,
    url,
    wait_until,
)


def active(runtime: Any) -> int:
    return sum(len(item.connections) for item in runtime.listeners.values())


def endpoint_active(runtime: Any) -> list[int]:
    return [state.active for state in runtime.listeners["ws"].endpoints.values()]


async def _serve_raw(answer: bytes) -> asyncio.Server:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()  # until the proxy closes
        writer.close()

    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def test_client_controlled_hash_input_never_hangs_a_connection(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = listener(
        backends={
            "scheduler": "hash",
            "hash": {"source": "query", "name": "room"},
            "endpoints": [backend.endpoint],
        }
    )
    runtime = await dataplane(snapshot(config))
    for path in ("//[x?room=1", "/?room=%ff%fe", "/?room=[::"):
        async with connect(url(runtime, path=path), ping_interval=None, open_timeout=3) as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"
    await wait_until(lambda: active(runtime) == 0)


async def test_backend_header_with_control_characters_gets_502_and_leaks_nothing(
    dataplane: Any,
) -> None:
    server = await _serve_raw(b"HTTP/1.1 101 Switching Protocols\r\nX-Bad: a\x00b\r\n\r\n")
    port = server.sockets[0].getsockname()[1]
    runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]}))
    )
    try:
        answer = await raw_request(runtime.listeners["ws"].config.port, upgrade_request())
        assert answer.startswith(b"HTTP/1.1 502")
        await wait_until(lambda: active(runtime) == 0 and endpoint_active(runtime) == [0])
    finally:
        server.close()


async def test_backend_answer_without_headers_is_relayed_as_is(dataplane: Any) -> None:
    server = await _serve_raw(b"HTTP/1.1 200 OK\r\n\r\nhello")
    port = server.sockets[0].getsockname()[1]
    runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]}))
    )
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", runtime.listeners["ws"].config.port
        )
        writer.write(upgrade_request())
        data = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
        assert data == b"HTTP/1.1 200 OK\r\n\r\nhello"
        writer.close()
    finally:
        server.close()


async def test_request_target_with_a_bare_cr_is_400_and_never_forwarded(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    answer = await raw_request(
        runtime.listeners["ws"].config.port,
        upgrade_request(path="/a\rX-Forwarded-For:6.6.6.6\rX:"),
    )
    assert answer.startswith(b"HTTP/1.1 400")


async def test_client_that_never_reads_is_released(dataplane: Any) -> None:
    async def flood(connection: ServerConnection) -> None:
        chunk = b"x" * 65536
        try:
            for _ in range(200):  # bounded: ~13 MiB at most
                await connection.send(chunk)
        except Exception:  # noqa: S110 - the proxy cut us off, as it should
            pass

    async with serve(flood, "127.0.0.1", 0, max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        config = listener(
            idleTimeoutSeconds=1,
            limits={"maxMessageBytes": 1 << 20},
            backends={"endpoints": [{"address": "127.0.0.1", "port": port}]},
        )
        runtime = await dataplane(snapshot(config))
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", runtime.listeners["ws"].config.port))
        sock.sendall(upgrade_request())
        try:
            # The client never reads: flow control stops the backend, the idle timer
            # closes, and the close gives up on the stuck write after the close timeout.
            await wait_until(lambda: active(runtime) == 1, timeout=5)
            await wait_until(lambda: active(runtime) == 0, timeout=15)
            assert endpoint_active(runtime) == [0]
        finally:
            sock.close()


async def test_backend_connections_gauge_counts_open_tunnels(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
    labels = {"listener": "ws", "backend": f"127.0.0.1:{backend.port}"}

    def gauge() -> float | None:
        return runtime.metrics.registry.get_sample_value(
            "wslb_dataplane_backend_connections_active", labels
        )

    first = await connect(url(runtime), ping_interval=None)
    second = await connect(url(runtime), ping_interval=None)
    await wait_until(lambda: gauge() == 2)
    await first.close()
    await wait_until(lambda: gauge() == 1)
    await second.close()
    await wait_until(lambda: gauge() == 0)
