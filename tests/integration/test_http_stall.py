"""A backend that stops reading a request body mid-upload, through a real listener.

The backend here reads the request head and a little of the body, then stops reading:
its socket's buffers fill, the data plane's write buffer to it fills, and the client is
no longer read (flow control). Nothing then moves on either connection unless the data
plane bounds the stall itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import io
import json
import socket
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dataplane.access_log import AccessLog
from dataplane.http_proxy import HOLD_BACKEND, TCP_CLOSE_WAIT, BackendConn, client_left
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.logs import LogFormat
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import listener, snapshot, wait_until
from tests.integration.http_backend import HttpBackend, Seen, read_answer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BODY = 512 * MIB  # declared; the client stops long before (the pipe fills at a few MiB)
BLOCK = 256 * 1024


@dataclass
class Stalling:
    """The backend's side of the stall: what it read, and what it saw of the close."""

    taken: int = 64 * 1024  # body bytes read before it stops reading
    head: bytes = b""  # an answer's head written before it stops (then it sends no more)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # EOF or reset seen

    async def handler(self, seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        await reader.readexactly(self.taken)
        if self.head:
            writer.write(self.head)
        self.stalled.set()
        await self.resume.wait()  # reads nothing until the test says so
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while await reader.read(MIB):
                    pass
        self.ended.set()


@dataclass
class Uploader:
    """A client that sends a large body as fast as the data plane takes it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    until: Callable[[], bool] | None = None  # stops sending once this is true
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, port: int, until: Callable[[], bool] | None = None) -> Uploader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if until is not None:
            # Little in flight at any time, so what was sent when `until` turns true fits
            # in the data plane's receive buffer: nothing is left unsent to hold back a FIN.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
            writer.transport.set_write_buffer_limits(high=0)
        uploader = cls(reader, writer, until)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % BODY)
        uploader.task = asyncio.create_task(uploader._send())
        return uploader

    async def _send(self) -> None:
        block = b"u" * BLOCK
        with contextlib.suppress(ConnectionError):
            for _ in range(BODY // BLOCK):  # bounded: the data plane stops reading long before
                if self.until is not None and self.until():
                    return
                self.writer.write(block)
                await self.writer.drain()

    def unsent(self) -> int:
        """Bytes in the client's kernel send buffer not yet taken by the data plane."""
        sock = self.writer.get_extra_info("socket")
        count = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int.from_bytes(count, sys.byteorder)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.writer.transport.abort()


@dataclass
class Logged:
    """A runtime whose access log writes JSON lines to a string."""

    runtime: Runtime
    access_log: AccessLog
    stream: io.StringIO

    async def last_line(self) -> dict[str, Any]:
        """The last line written (the writer thread takes a moment)."""
        self.access_log.flush()
        await wait_until(lambda: bool(self.stream.getvalue()))
        return dict(json.loads(self.stream.getvalue().splitlines()[-1]))


@pytest.fixture
async def logged() -> AsyncIterator[Logged]:
    stream = io.StringIO()
    access_log = AccessLog(LogFormat.JSON, stream=stream)
    access_log.start()
    runtime = Runtime(Metrics(), access_log=access_log)
    yield Logged(runtime, access_log, stream)
    await runtime.shutdown(drain_timeout=0)
    access_log.close()


async def start(runtime: Runtime, backend: HttpBackend, timeout: float) -> int:
    config = listener(
        backends={"endpoints": [backend.endpoint]},
        http={"responseHeadTimeoutSeconds": timeout},
    )
    await runtime.apply(parse_snapshot(snapshot(config)))
    return runtime.listeners["ws"].config.port


def sample(runtime: Runtime, name: str, **labels: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(name, {"listener": "ws", **labels})


def held_by_backend(runtime: Runtime) -> BackendConn | None:
    """The backend connection whose full write buffer keeps the client from being read."""
    for connection in runtime.listeners["ws"].connections:
        session = connection.http
        if session is not None and session.holds & HOLD_BACKEND and session.current is not None:
            return session.current.backend
    return None


async def test_backend_that_stops_reading_the_body_gets_504_and_both_connections_close(
    logged: Logged,
) -> None:
    runtime = logged.runtime
    stall = Stalling()
    backend = await HttpBackend(handler=stall.handler, read_bodies=False).start()
    port = await start(runtime, backend, timeout=0.5)
    uploader = await Uploader.start(port)
    try:
        async with asyncio.timeout(10):
            await stall.stalled.wait()
        began = time.monotonic()
        await wait_until(lambda: held_by_backend(runtime) is not None, timeout=10)
        conn = held_by_backend(runtime)
        assert conn is not None
        async with asyncio.timeout(10):
            answer = await read_answer(uploader.reader)
        waited = time.monotonic() - began
        assert answer.status == 504
        assert answer.field("Connection") == "close"
        assert waited >= 0.3  # not at once: the bound is 0.5 s from the stall's start
        # closed at once, its unsent body dropped (not flushed to a backend that reads none)
        await wait_until(lambda: conn.lost, timeout=2)
        await wait_until(lambda: not runtime.listeners["ws"].connections)
        stall.resume.set()  # the backend reads again: it finds its connection ended
        async with asyncio.timeout(5):
            await stall.ended.wait()
    finally:
        await uploader.stop()
        stall.resume.set()
        await backend.stop()
    assert (
        sample(runtime, "wslb_dataplane_http_backend_errors_total", rule="default", kind="timeout")
        == 1
    )
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="backend_timeout") == 1
    line = await logged.last_line()
    assert (line["status"], line["reason"]) == (504, "backend_timeout")


async def test_stall_after_the_answer_head_was_relayed_cuts_the_client_connection(
    logged: Logged,
) -> None:
    """No 504 can follow a relayed head: the client connection is closed instead."""
    runtime = logged.runtime
    stall = Stalling(head=b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    backend = await HttpBackend(handler=stall.handler, read_bodies=False).start()
    port = await start(runtime, backend, timeout=0.5)
    uploader = await Uploader.start(port)
    try:
        async with asyncio.timeout(10):
            head = await uploader.reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            rest = b""
            with contextlib.suppress(ConnectionError):
                rest = await uploader.reader.read()  # to the close, not a chunk's end
        assert b"504" not in rest
        await wait_until(lambda: not runtime.listeners["ws"].connections)
    finally:
        await uploader.stop()
        stall.resume.set()
        await backend.stop()
    assert (
        sample(runtime, "wslb_dataplane_http_backend_errors_total", rule="default", kind="timeout")
        == 1
    )


async def test_backend_that_keeps_reading_slowly_is_not_cut(
    logged: Logged,
) -> None:
    """Stalls shorter than the bound, adding up to more than it, are progress."""
    runtime = logged.runtime
    total = 48 * MIB
    pauses = 0

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        nonlocal pauses
        got = 0
        while got < total:
            if got >= (pauses + 1) * 12 * MIB:
                pauses += 1
                await asyncio.sleep(0.4)  # the backend's own pace, under the 1 s bound
            got += len(await reader.read(min(MIB, total - got)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = await HttpBackend(handler=slow, read_bodies=False).start()
    port = await start(runtime, backend, timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"s" * MIB
        started = time.monotonic()
        async with asyncio.timeout(30):
            for _ in range(total // MIB):
                writer.write(block)
                await writer.drain()
            answer = await read_answer(reader)
        elapsed = time.monotonic() - started
    finally:
        writer.close()
        await backend.stop()
    assert (answer.status, answer.body) == (200, b"ok")
    assert pauses == 3
    assert elapsed > 1.0  # longer than the bound in all, so progress is what kept it alive


async def test_backend_reading_a_trickle_is_progress_then_its_stop_a_stall(
    logged: Logged,
) -> None:
    """Small reads keep the data plane's own buffer full (the kernel's send buffer takes
    them up), so the bytes the backend acknowledged count as progress too."""
    runtime = logged.runtime
    trickled = asyncio.Event()
    release = asyncio.Event()

    async def trickle(seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        await reader.readexactly(64 * 1024)
        for _ in range(100):  # 2 s of 16 KiB reads, four times the bound
            await reader.readexactly(16 * 1024)
            await asyncio.sleep(0.02)  # the backend's own pace
        trickled.set()
        await release.wait()  # then it reads nothing more

    backend = await HttpBackend(handler=trickle, read_bodies=False).start()
    port = await start(runtime, backend, timeout=0.5)
    uploader = await Uploader.start(port)
    try:
        async with asyncio.timeout(15):
            answer = await read_answer(uploader.reader)
        assert trickled.is_set()  # not cut while the backend still read
        assert answer.status == 504
    finally:
        await uploader.stop()
        release.set()
        await backend.stop()


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_client_leaving_during_the_stall_closes_the_backend_connection(
    logged: Logged, how: str
) -> None:
    """Its reading paused, the client's reset or FIN is noticed all the same, well
    before the 504 bound, and the request is logged as client_gone."""
    runtime = logged.runtime
    stall = Stalling()
    backend = await HttpBackend(handler=stall.handler, read_bodies=False).start()
    port = await start(runtime, backend, timeout=60)
    uploader = await Uploader.start(port, until=lambda: held_by_backend(runtime) is not None)
    try:
        assert uploader.task is not None
        async with asyncio.timeout(10):
            await uploader.task  # sent until the data plane stopped reading it
        # Everything sent has reached the data plane's socket, so a FIN is not queued
        # behind unsent bytes (a window of 0 would hold it back).
        await wait_until(lambda: uploader.unsent() == 0)
        sock = uploader.writer.get_extra_info("socket")
        if how == "reset":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        uploader.writer.transport.abort()  # a reset with the linger set, else a FIN
        await wait_until(lambda: not runtime.listeners["ws"].connections, timeout=5)
        stall.resume.set()
        async with asyncio.timeout(5):
            await stall.ended.wait()
    finally:
        await uploader.stop()
        stall.resume.set()
        await backend.stop()
    assert [e.active for e in runtime.listeners["ws"].default.endpoints.values()] == [0]
    line = await logged.last_line()
    assert (line["status"], line["reason"]) == (0, "client_gone")
    assert (
        sample(runtime, "wslb_dataplane_http_backend_errors_total", rule="default", kind="timeout")
        is None
    )


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A loopback TCP connection: (the client's end, the data plane's end, never read)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname())
        accepted, _ = server.accept()
    with client, accepted:
        yield client, accepted


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def test_probe_sees_a_reset(pair: tuple[socket.socket, socket.socket]) -> None:
    client, accepted = pair
    transport = asyncio.BaseTransport({"socket": accepted})
    assert not client_left(transport, None)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    await wait_until(lambda: client_left(transport, None), timeout=2)


async def test_probe_tells_a_truncated_body_from_a_half_close(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, accepted = pair
    transport = asyncio.BaseTransport({"socket": accepted})
    client.sendall(b"b" * 100)
    assert not client_left(transport, 101)  # still open: more may come
    client.shutdown(socket.SHUT_WR)
    await wait_until(lambda: tcp_state(accepted) == TCP_CLOSE_WAIT, timeout=2)
    assert client_left(transport, 101)  # its FIN came one byte short of the body
    assert not client_left(transport, 100)  # the whole body waits unread: a half-close
    assert not client_left(transport, None)  # chunked: the end cannot be told unread
