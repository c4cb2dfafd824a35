"""A backend that stops reading a request body mid-upload, through a real listener.

The backend here reads the request head and a little of the body, then stops reading:
its socket's buffers fill, the data plane's write buffer to it fills, and the client is
no longer read (flow control). Nothing then moves on either connection unless the data
plane bounds the stall itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from dataplane.access_log import AccessLog
from dataplane.http_proxy import HOLD_BACKEND, BackendConn
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.logs import LogFormat
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import listener, snapshot, wait_until
from tests.integration.http_backend import HttpBackend, Seen, read_answer

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
BODY = 512 * MIB  # declared; the client stops long before (the pipe fills at a few MiB)


@dataclass
class Stalling:
    """The backend's side of the stall: what it read, and what it saw of the close."""

    taken: int = 64 * 1024  # body bytes read before it stops reading
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # EOF or reset seen

    async def handler(self, seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        await reader.readexactly(self.taken)
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
    task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, port: int) -> Uploader:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        uploader = cls(reader, writer)
        writer.write(b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % BODY)
        uploader.task = asyncio.create_task(uploader._send())
        return uploader

    async def _send(self) -> None:
        block = b"u" * MIB
        with contextlib.suppress(ConnectionError):
            for _ in range(BODY // MIB):  # bounded: the data plane stops reading long before
                self.writer.write(block)
                await self.writer.drain()

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

    def last_line(self) -> dict[str, Any]:
        self.access_log.flush()
        lines = self.stream.getvalue().splitlines()
        assert lines, "no access log line"
        return dict(json.loads(lines[-1]))


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
    line = logged.last_line()
    assert (line["status"], line["reason"]) == (504, "backend_timeout")


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
