"""How tunnels end, end to end with raw peers: mid-frame deaths, the close timer,
keepalive timing, protocol errors failed toward the backend first, vanished clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode

from dataplane.runtime import Runtime
from tests.integration.conftest import listener, snapshot, wait_until
from tests.integration.rawpeers import (
    RawBackend,
    RawClient,
    close,
    close_code,
    raw_backend,
    text,
)

pytestmark = pytest.mark.integration


def port_of(runtime: Runtime) -> int:
    return runtime.listeners["ws"].config.port


def closes_total(runtime: Runtime, code: str, initiator: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "wslb_dataplane_closes_total", {"listener": "ws", "code": code, "initiator": initiator}
    )
    return value or 0.0


async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, b: RawBackend) -> None:
    """A backend that reads and records, and never answers anything."""
    await b.read_frames(reader)


async def test_backend_dying_mid_frame_closes_the_client_at_once(dataplane: Any) -> None:
    async def die_mid_frame(reader: Any, writer: asyncio.StreamWriter, b: RawBackend) -> None:
        frame = Frame(Opcode.BINARY, b"x" * 1000).serialize(mask=False)
        writer.write(frame[:300])
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    async with raw_backend(die_mid_frame) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        started = time.monotonic()
        await client.read_until(lambda c: False, timeout=5)
        assert client.eof_at is not None
        # At once, not after the close timer (3 s): no Close can follow a partial frame.
        assert client.eof_at - started < 1.0
        assert client.frames == []  # the partial frame, and no Close frame after it
        client.close()


async def test_backend_dying_between_frames_gives_the_client_1014(dataplane: Any) -> None:
    async def die(reader: Any, writer: asyncio.StreamWriter, b: RawBackend) -> None:
        writer.write(text(b"last words", mask=False))
        await writer.drain()
        writer.transport.abort()

    async with raw_backend(die) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        await client.read_until(lambda c: any(f.opcode is Opcode.CLOSE for f in c.frames))
        assert [f.opcode for f in client.frames] == [Opcode.TEXT, Opcode.CLOSE]
        assert close_code(client.frames[1]) == 1014
        client.close()


async def test_client_dying_mid_frame_closes_the_backend_at_once(dataplane: Any) -> None:
    async with raw_backend(hold) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        frame = Frame(Opcode.BINARY, b"y" * 1000).serialize(mask=True)
        client.send(frame[:300])
        await asyncio.sleep(0.1)
        started = time.monotonic()
        client.writer.transport.abort()
        await wait_until(lambda: backend.eof_at is not None, timeout=5)
        assert backend.eof_at is not None and backend.eof_at - started < 1.0
        assert backend.frames == []  # no Close frame could follow the partial one
        await wait_until(lambda: closes_total(runtime, "1006", "client") == 1)


async def test_a_vanished_client_counts_as_1006_and_the_backend_hears_1001(
    dataplane: Any,
) -> None:
    async with raw_backend(hold) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        client.send(text(b"hello", mask=True))
        await wait_until(lambda: len(backend.frames) == 1)
        client.writer.transport.abort()
        await wait_until(lambda: closes_total(runtime, "1006", "client") == 1)
        assert closes_total(runtime, "1001", "client") == 0
        await wait_until(lambda: backend.eof_at is not None)
        assert [f.opcode for f in backend.frames] == [Opcode.TEXT, Opcode.CLOSE]
        assert close_code(backend.frames[1]) == 1001


async def test_close_timer_ends_a_close_the_backend_never_answers(dataplane: Any) -> None:
    """The client's Close goes through; the backend never replies: after the close
    timer (3 s) both TCP connections close, instead of the client's own 10 s timeout."""
    async with raw_backend(hold) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        async with connect(f"ws://127.0.0.1:{port_of(runtime)}/", close_timeout=10) as ws:
            started = time.monotonic()
            await ws.close()
            elapsed = time.monotonic() - started
        assert 2.5 <= elapsed < 5, elapsed
        assert [f.opcode for f in backend.frames] == [Opcode.CLOSE]
        await wait_until(lambda: backend.eof_at is not None)


async def test_keepalive_1011_reaches_the_client_within_interval_plus_timeout(
    dataplane: Any,
) -> None:
    """The backend is stopped (reads nothing, answers nothing); the client answers pings."""
    async with raw_backend(hold) as backend:
        config = listener(
            keepalive={"intervalSeconds": 1, "timeoutSeconds": 1},
            backends={"endpoints": [backend.endpoint]},
        )
        runtime = await dataplane(snapshot(config))
        client = await RawClient.connect(port_of(runtime))
        opened = time.monotonic()
        await client.read_until(
            lambda c: any(f.opcode is Opcode.CLOSE for f in c.frames), answer_pings=True
        )
        elapsed = time.monotonic() - opened
        assert [f.opcode for f in client.frames] == [Opcode.PING, Opcode.CLOSE]
        assert close_code(client.frames[1]) == 1011
        assert 1.9 <= elapsed <= 1 + 1 + 0.2, elapsed
        client.close()


async def answer_then_close(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, b: RawBackend
) -> None:
    """Answers every text message; echoes a Close and ends (a conformant server)."""

    def on_frame(frame: Frame) -> bool:
        if frame.opcode is Opcode.TEXT:
            writer.write(text(b"answer to " + frame.data, mask=False))
        elif frame.opcode is Opcode.CLOSE:
            writer.write(close(close_code(frame), mask=False))
            return False
        return True

    await b.read_frames(reader, on_frame)
    await writer.drain()


def raw_frame(b0: int, payload: bytes, masked: bool = True) -> bytes:
    key = b"\x0a\x0b\x0c\x0d"
    if not masked:
        return bytes([b0, len(payload)]) + payload
    return (
        bytes([b0, 0x80 | len(payload)])
        + key
        + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    )


BAD = {
    "reserved control opcode 0xB": raw_frame(0x8B, b""),
    "reserved control opcode 0xF": raw_frame(0x8F, b""),
    "reserved data opcode 0x3": raw_frame(0x83, b"x"),
    "unmasked client frame": raw_frame(0x81, b"plain", masked=False),
    "RSV1 without an extension": raw_frame(0xC1, b"x"),
}


@pytest.mark.parametrize("bad", list(BAD), ids=list(BAD))
async def test_client_protocol_error_fails_toward_the_backend_first(
    dataplane: Any, bad: str
) -> None:
    """The backend's answer to the earlier valid message still reaches the client, then
    the Close 1002; the bad frame never reaches the backend."""
    async with raw_backend(answer_then_close) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        client.send(text(b"question", mask=True) + BAD[bad] + text(b"after", mask=True))
        await client.read_until(lambda c: any(f.opcode is Opcode.CLOSE for f in c.frames))
        assert [(f.opcode, f.data) for f in client.frames[:1]] == [
            (Opcode.TEXT, b"answer to question")
        ]
        assert [f.opcode for f in client.frames] == [Opcode.TEXT, Opcode.CLOSE]
        assert close_code(client.frames[1]) == 1002
        assert backend.errors == []
        assert [f.opcode for f in backend.frames] == [Opcode.TEXT, Opcode.CLOSE]
        assert close_code(backend.frames[1]) == 1002
        await client.read_until(lambda c: False)
        assert client.eof_at is not None
        client.close()
        await wait_until(lambda: closes_total(runtime, "1002", "proxy") == 1)


async def test_rsv_bits_pass_when_the_backend_negotiated_an_extension(dataplane: Any) -> None:
    async with raw_backend(hold, extra_101="Sec-WebSocket-Extensions: x-test\r\n") as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))
        client = await RawClient.connect(port_of(runtime))
        frame = raw_frame(0xC1, b"x")
        client.send(frame)
        await wait_until(lambda: len(backend.frames) == 1 or bool(backend.errors))
        # websockets' parser refuses RSV1 without its own extension: what matters is that
        # the frame went through unchanged, and the client was not failed.
        assert client.frames == []
        client.close()


async def test_backend_failing_a_long_fragmented_message_and_half_closing_ends_quickly(
    dataplane: Any,
) -> None:
    """A conformant server refusing a message with too many fragments sends Close 1009,
    half-closes and stops reading: the client must not wait for its own close timeout."""
    release = asyncio.Event()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, b: Any) -> None:
        await b.read_frames(reader, lambda frame: len(b.frames) < 3)
        writer.write(close(1009, mask=False, reason="too many fragments"))
        writer.write_eof()
        await release.wait()  # reads nothing more, keeps the socket

    async with raw_backend(refuse) as backend:
        runtime = await dataplane(snapshot(listener(backends={"endpoints": [backend.endpoint]})))

        async def fragments() -> Any:
            for _ in range(400):
                yield b"f" * 65536

        try:
            async with connect(
                f"ws://127.0.0.1:{port_of(runtime)}/", close_timeout=10, max_size=None
            ) as ws:
                started = time.monotonic()
                sender = asyncio.ensure_future(ws.send(fragments()))
                await asyncio.wait_for(ws.wait_closed(), 8)
                elapsed = time.monotonic() - started
                sender.cancel()
            assert ws.close_code == 1009
            assert elapsed < 1.5, elapsed  # not the 3 s close timer, not the 10 s of the client
        finally:
            release.set()
