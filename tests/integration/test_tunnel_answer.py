"""The backend's answer to the upgrade as the tunnel collects it: a 101 head split over
several reads (held in the dial until complete) and the frames that came with its end
(relayed once the tunnel opens), through a real data plane on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.integration.conftest import listener, snapshot, upgrade_request, wait_until

FRAME = b"\x81\x02hi"  # a backend's unmasked text frame, "hi"
HEAD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: x\r\n\r\n"
)


def _answers_held(runtime: Any) -> list[bytes]:
    """The backend answer bytes each connection's dial holds so far."""
    held = []
    for connection in runtime.listeners["ws"].connections:
        dial = connection.dial
        if dial is not None and dial.answer:
            held.append(bytes(dial.answer))
    return held


async def test_a_101_split_over_reads_then_a_frame_in_its_last_piece_reach_the_client_whole(
    dataplane: Any,
) -> None:
    runtime_box: list[Any] = []
    cuts = (20, 60)  # the head in three pieces: status line, two fields, the rest

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        runtime = runtime_box[0]
        start = 0
        for cut in cuts:
            writer.write(HEAD[start:cut])
            await writer.drain()
            # The proxy has read this piece and holds it: the next one is another read.
            await wait_until(lambda cut=cut: _answers_held(runtime) == [HEAD[:cut]])
            start = cut
        writer.write(HEAD[start:] + FRAME)  # the head's end and a frame in one write
        await writer.drain()
        await reader.read()  # until the proxy closes
        writer.close()

    server = await asyncio.start_server(backend, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        runtime = await dataplane(
            snapshot(listener(backends={"endpoints": [{"address": "127.0.0.1", "port": port}]}))
        )
        runtime_box.append(runtime)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", runtime.listeners["ws"].config.port
        )
        writer.write(upgrade_request())
        async with asyncio.timeout(5):
            got = await reader.readexactly(len(HEAD) + len(FRAME))
        assert got == HEAD + FRAME
        assert _answers_held(runtime) == []  # nothing kept once the tunnel opened
        writer.close()
    finally:
        server.close()


async def test_a_retry_after_a_backend_left_mid_head_relays_only_the_next_answer(
    dataplane: Any,
) -> None:
    """The dial keeps one answer buffer for all its attempts: a backend that sends part of
    its head and closes must leave nothing behind for the retry's backend (found by
    review: the client got the two heads glued together)."""
    answered: list[int] = []
    gone = asyncio.Event()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        answered.append(1)
        if len(answered) == 1:
            writer.write(HEAD[:45])  # the status line and part of a field, then gone
            await writer.drain()
            writer.close()
            gone.set()
            return
        writer.write(HEAD + FRAME)
        await writer.drain()
        await reader.read()
        writer.close()

    servers = [await asyncio.start_server(backend, "127.0.0.1", 0) for _ in range(2)]
    endpoints = [{"address": "127.0.0.1", "port": s.sockets[0].getsockname()[1]} for s in servers]
    try:
        runtime = await dataplane(
            snapshot(listener(backends={"endpoints": endpoints}, limits={"connectRetries": 2}))
        )
        port = runtime.listeners["ws"].config.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(upgrade_request())
        async with asyncio.timeout(5):
            got = await reader.readexactly(len(HEAD) + len(FRAME))
        assert gone.is_set() and len(answered) == 2
        assert got == HEAD + FRAME
        writer.close()
    finally:
        for server in servers:
            server.close()
