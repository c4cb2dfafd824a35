"""A client that stops sending its request body (a slow POST), through a real listener.

A raw client sends a head and part of its body, then nothing, without a FIN: without a
bound, the client connection and the backend connection (waiting for the rest) are held
forever. requestBodyTimeoutSeconds bounds the gap between two reads of the body, but only
while the client is being read: a client paused by flow control waits on the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration import test_http_stall as stall_tests
from tests.integration.conftest import listener, snapshot, wait_until
from tests.integration.http_backend import HttpBackend, Seen, read_answer, response
from tests.integration.test_http_stall import Logged, Stalling, Uploader, held_by_backend, sample

pytestmark = pytest.mark.integration


logged = stall_tests.logged  # the fixture: a runtime whose access log is read back
EXPECTING = b"PUT /c HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"


async def start(runtime: Runtime, backend: HttpBackend, **http: float) -> int:
    config = listener(backends={"endpoints": [backend.endpoint]}, http=http)
    await runtime.apply(parse_snapshot(snapshot(config)))
    return runtime.listeners["ws"].config.port


@dataclass
class Patient:
    """A backend that reads the body as it comes, to its end or the connection's."""

    received: bytearray = field(default_factory=bytearray)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # EOF or reset seen

    async def handler(self, seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        length = int(seen.field("Content-Length") or 0)
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while len(self.received) < length:
                    data = await reader.read(65536)
                    if not data:
                        break
                    self.received += data
        if len(self.received) == length:
            writer.write(response(200, b"%d" % length))
            return
        self.ended.set()


async def patient_proxy(
    runtime: Runtime, bound: float
) -> tuple[Patient, HttpBackend, asyncio.StreamReader, asyncio.StreamWriter]:
    """A Patient backend behind the listener, and a client connection to it."""
    patient = Patient()
    backend = await HttpBackend(handler=patient.handler, read_bodies=False).start()
    port = await start(runtime, backend, requestBodyTimeoutSeconds=bound)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return patient, backend, reader, writer


async def test_client_silent_inside_its_body_gets_408_and_its_backend_is_closed(
    logged: Logged,
) -> None:
    runtime = logged.runtime
    patient, backend, reader, writer = await patient_proxy(runtime, 0.5)
    try:
        writer.write(
            b"POST /upload HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n" + b"b" * 10
        )
        began = time.monotonic()
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
        waited = time.monotonic() - began
        assert answer.status == 408
        assert answer.field("Connection") == "close"
        assert 0.4 <= waited < 2.5  # the bound, not at once and not much later
        async with asyncio.timeout(5):
            await patient.ended.wait()  # the backend's connection ended, not left waiting
        assert bytes(patient.received) == b"b" * 10
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # then the client connection is closed
        await wait_until(lambda: not runtime.listeners["ws"].connections)
    finally:
        writer.close()
        await backend.stop()
    site = runtime.listeners["ws"]
    assert [e.active for e in site.default.endpoints.values()] == [0]
    assert len(site.default.pool) == 0  # never pooled
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") == 1
    line = await logged.last_line()
    assert (line["status"], line["reason"], line["bytes_from_client"]) == (408, "body_timeout", 10)


async def test_client_silent_after_the_answer_began_is_cut_without_a_408(
    logged: Logged,
) -> None:
    """A backend that answers before reading the body: no 408 can follow its head."""
    runtime = logged.runtime
    ended = asyncio.Event()

    async def early(seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(10):
                while await reader.read(65536):
                    pass
        ended.set()

    backend = await HttpBackend(handler=early, read_bodies=False).start()
    port = await start(runtime, backend, requestBodyTimeoutSeconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /early HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\nxx")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 ")
            rest = b""
            with contextlib.suppress(ConnectionError):
                rest = await reader.read()  # to the close, not a chunk's end
            await ended.wait()  # and the backend's connection ended too
        assert b"408" not in rest
        assert not rest.endswith(b"0\r\n\r\n")  # cut, not a complete answer
    finally:
        writer.close()
        await backend.stop()
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") == 1


async def test_gaps_shorter_than_the_bound_are_not_cut_however_long_the_body(
    logged: Logged,
) -> None:
    """The bound is on the gap between reads, not on the whole body's time."""
    runtime = logged.runtime
    patient, backend, reader, writer = await patient_proxy(runtime, 0.5)
    try:
        writer.write(b"POST /slow HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n")
        began = time.monotonic()
        for _ in range(10):
            await asyncio.sleep(0.15)  # the client's own pace, under the bound
            writer.write(b"s")
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
        elapsed = time.monotonic() - began
    finally:
        writer.close()
        await backend.stop()
    assert (answer.status, answer.body) == (200, b"10")
    assert bytes(patient.received) == b"s" * 10
    assert elapsed > 1.0  # twice the bound in all
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") is None


async def test_client_paused_by_flow_control_is_not_cut_by_the_body_timer(
    logged: Logged,
) -> None:
    """The backend stops reading, so the client is not read: the gap is the backend's,
    and the backend stall's 504 applies (after far longer than the body bound)."""
    runtime = logged.runtime
    stall = Stalling()
    backend = await HttpBackend(handler=stall.handler, read_bodies=False).start()
    port = await start(
        runtime, backend, requestBodyTimeoutSeconds=0.3, responseHeadTimeoutSeconds=2
    )
    uploader = await Uploader.start(port)
    try:
        async with asyncio.timeout(10):
            await stall.stalled.wait()
        await wait_until(lambda: held_by_backend(runtime) is not None, timeout=10)
        held = time.monotonic()
        async with asyncio.timeout(10):
            answer = await read_answer(uploader.reader)
        waited = time.monotonic() - held
    finally:
        await uploader.stop()
        stall.resume.set()
        await backend.stop()
    assert answer.status == 504
    assert waited > 1.0  # many body bounds while paused
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") is None
    line = await logged.last_line()
    assert (line["status"], line["reason"]) == (504, "backend_timeout")


async def test_client_waiting_for_100_continue_is_not_cut_before_its_first_byte(
    logged: Logged,
) -> None:
    """With Expect: 100-continue the client waits for the backend before its body."""
    runtime = logged.runtime

    async def slow_continue(seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        await asyncio.sleep(0.8)  # the backend's own delay, past the 0.3 s bound
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await reader.readexactly(4)
        writer.write(response(200, body))

    backend = await HttpBackend(handler=slow_continue, read_bodies=False).start()
    port = await start(runtime, backend, requestBodyTimeoutSeconds=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(EXPECTING)
        async with asyncio.timeout(5):
            interim = await read_answer(reader)
            assert interim.status == 100
            writer.write(b"data")
            answer = await read_answer(reader)
    finally:
        writer.close()
        await backend.stop()
    assert (answer.status, answer.body) == (200, b"data")
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") is None


async def test_client_silent_after_expect_100_continue_to_a_backend_that_ignores_it_gets_504(
    logged: Logged,
) -> None:
    """The backend owes an immediate answer to the expectation: without one for
    responseHeadTimeoutSeconds, the wait ends (it cannot slip past the body timer)."""
    runtime = logged.runtime
    patient = Patient()  # waits for the body, never sends 100
    backend = await HttpBackend(handler=patient.handler, read_bodies=False).start()
    port = await start(
        runtime, backend, requestBodyTimeoutSeconds=60, responseHeadTimeoutSeconds=0.5
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(EXPECTING)
        began = time.monotonic()
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
            waited = time.monotonic() - began
            await patient.ended.wait()
    finally:
        writer.close()
        await backend.stop()
    assert answer.status == 504
    assert 0.4 <= waited < 2.5
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="backend_timeout") == 1
    assert (
        sample(runtime, "wslb_dataplane_http_backend_errors_total", rule="default", kind="timeout")
        == 1
    )


async def test_body_sent_without_waiting_for_100_takes_the_body_bound(
    logged: Logged,
) -> None:
    """A client that stops waiting for 100 (curl after 1 s) and sends part of its body is
    held to the body's bound from its first byte, not to the backend's longer one."""
    runtime = logged.runtime
    patient = Patient()
    backend = await HttpBackend(handler=patient.handler, read_bodies=False).start()
    port = await start(
        runtime, backend, requestBodyTimeoutSeconds=0.5, responseHeadTimeoutSeconds=30
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(EXPECTING)
        await wait_until(lambda: backend.accepted == 1)
        writer.write(b"da")  # then silence
        began = time.monotonic()
        async with asyncio.timeout(5):
            answer = await read_answer(reader)
        waited = time.monotonic() - began
    finally:
        writer.close()
        await backend.stop()
    assert answer.status == 408
    assert 0.4 <= waited < 2.5
    assert sample(runtime, "wslb_dataplane_rejections_total", reason="body_timeout") == 1
