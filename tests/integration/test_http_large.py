"""Large bodies stream through the data plane with flow control: a 1 GiB download to a
reader that stalls, and a 256 MiB upload to a backend that stalls, while the data plane
process's peak RSS stays bounded (nothing is buffered whole)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import listener, snapshot
from tests.integration.http_backend import HttpBackend, Seen, read_answer, response

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
GROWTH_LIMIT = 64 * MIB  # peak RSS over the idle process: a few socket buffers, not the body
STALL = 0.5  # seconds a slow peer stops reading, several times per transfer


def rss(pid: int, field: str) -> int:
    """VmRSS or VmHWM (peak) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


async def stream_body(total: int, writer: asyncio.StreamWriter) -> None:
    block = b"x" * MIB
    sent = 0
    while sent < total:
        writer.write(block)
        sent += len(block)
        await writer.drain()


async def test_one_gib_download_to_a_stalling_reader_keeps_rss_bounded(
    dataplane_process: Any,
) -> None:
    total = 1024 * MIB

    async def big(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        await stream_body(total, writer)

    backend = await HttpBackend(handler=big).start()
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config)
    await proc.wait_ready()
    pid = proc.proc.pid
    baseline = rss(pid, "VmRSS")
    port = config["listeners"][0]["port"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=4 * MIB)
    writer.write(b"GET /big HTTP/1.1\r\nHost: h\r\n\r\n")
    received = 0
    stalls = 0
    next_stall = 256 * MIB
    started = time.monotonic()
    try:
        async with asyncio.timeout(100):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"Content-Length: %d" % total in head
            while received < total:
                if received >= next_stall:
                    stalls += 1
                    next_stall += 256 * MIB
                    await asyncio.sleep(STALL)  # the reader stalls: the proxy must stop too
                chunk = await reader.read(MIB)
                assert chunk, f"closed after {received} bytes"
                received += len(chunk)
    finally:
        writer.close()
        await backend.stop()
    elapsed = time.monotonic() - started
    growth = rss(pid, "VmHWM") - baseline
    print(f"1 GiB through the proxy in {elapsed:.1f}s, peak RSS growth {growth / MIB:.1f} MiB")
    assert received == total
    assert stalls == 3
    assert growth < GROWTH_LIMIT, f"peak RSS grew by {growth / MIB:.0f} MiB"


async def test_large_upload_to_a_stalling_backend_keeps_rss_bounded(
    dataplane_process: Any,
) -> None:
    total = 256 * MIB

    async def slow_reader(
        seen: Seen, reader: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        length = int(seen.field("Content-Length") or 0)
        got = 0
        next_stall = 64 * MIB
        while got < length:
            if got >= next_stall:
                next_stall += 64 * MIB
                await asyncio.sleep(STALL)
            got += len(await reader.read(min(MIB, length - got)))
        w.write(response(200, str(got).encode()))

    backend = await HttpBackend(handler=slow_reader, read_bodies=False).start()
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config)
    await proc.wait_ready()
    pid = proc.proc.pid
    baseline = rss(pid, "VmRSS")
    port = config["listeners"][0]["port"]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async with asyncio.timeout(100):
            writer.write(b"PUT /up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % total)
            await stream_body(total, writer)
            answer = await read_answer(reader)
    finally:
        writer.close()
        await backend.stop()
    growth = rss(pid, "VmHWM") - baseline
    print(f"256 MiB upload, peak RSS growth {growth / MIB:.1f} MiB")
    assert (answer.status, answer.body) == (200, str(total).encode())
    assert growth < GROWTH_LIMIT, f"peak RSS grew by {growth / MIB:.0f} MiB"
