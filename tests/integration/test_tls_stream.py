"""HTTPS/WSS listeners terminate TLS with dataplane.tls_stream: what that layer must do on
real loopback sockets, with real TLS clients (Python's ssl, websockets in a subprocess).

- a connection's TLS memory stays bounded: idle, and after a 1 MiB message each way
  (uvloop's ssl= holds ~280 KB idle and ~930 KB after, measured by malloc in use);
- the handshake deadline closes a silent client (counted, reason `timeout`); garbage
  instead of a ClientHello is closed at once with no traceback anywhere;
- a clean close sends close_notify (a Python client sees no truncation); a client's
  close_notify half-closes, and the backend's Close reply still reaches it;
- flow control both ways: a client that stops reading a large download makes the
  backend side stop, and an upload to a backend that stops reading stops the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from bench.procstat import malloc_bytes
from dataplane.metrics import Metrics
from dataplane.process_metrics import TlsFailures
from dataplane.runtime import Runtime
from dataplane.tls_stream import TlsStream
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import ROOT, TlsFiles, free_port, snapshot, url, wait_until
from tests.integration.http_backend import Seen
from tests.integration.tls_clients import https_listener

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
DEADLINE = 20.0  # seconds for any one wait in these tests


# ----------------------------------------------------------------- helpers


def malloc_in_use() -> int:
    """Bytes malloc handed out and not got back: OpenSSL's BIOs and buffers included,
    which tracemalloc does not see."""
    gc.collect()
    return malloc_bytes()


@pytest.fixture
async def echo_process() -> AsyncIterator[int]:
    """The demo echo backend in its own process (an in-process one would keep its own
    buffers of the big messages in the measured process); yields its port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dataplane.echo", "--port", str(port), "--log-level", "WARNING"],
        cwd=ROOT,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError("the echo backend did not start") from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            break
        yield port
    finally:
        proc.kill()
        proc.wait()


def holder(address: str, count: int, size: int, cafile: Path) -> subprocess.Popen[str]:
    """tests/integration/wss_holder.py: `count` WSS connections, one message each way."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.integration.wss_holder",
            address,
            str(count),
            str(size),
            str(cafile),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        text=True,
    )


def release(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write("close\n")
        proc.stdin.flush()
    try:
        proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the WSS clients did not close in time") from None


async def released(proc: subprocess.Popen[str]) -> None:
    """release() off the loop: the clients' close handshakes need the data plane."""
    await asyncio.get_running_loop().run_in_executor(None, release, proc)


async def hold(address: str, count: int, size: int, cafile: Path) -> subprocess.Popen[str]:
    proc = holder(address, count, size, cafile)
    assert proc.stdout is not None
    line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
    if f'"open": {count}' not in line:
        await released(proc)
        raise AssertionError(f"the WSS clients did not all open: {line!r}")
    return proc


class BioClient:
    """A TLS client over a plain asyncio stream with its own SSLObject, so a test can send
    close_notify and keep reading, and tell a close_notify from a bare EOF."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ca_pem: str
    ) -> None:
        self.reader, self.writer = reader, writer
        context = ssl.create_default_context(cadata=ca_pem)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")

    def _flush(self) -> None:
        if self.outgoing.pending:
            self.writer.write(self.outgoing.read())

    async def _more(self) -> None:
        data = await self.reader.read(65536)
        if not data:
            self.incoming.write_eof()
        else:
            self.incoming.write(data)

    async def handshake(self) -> None:
        while True:
            try:
                self.sslobj.do_handshake()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                await self._more()

    def send(self, data: bytes) -> None:
        self.sslobj.write(data)
        self._flush()

    def close_notify(self) -> None:
        with contextlib.suppress(ssl.SSLWantReadError):
            self.sslobj.unwrap()
        self._flush()

    async def recv(self) -> bytes:
        """Plaintext; b"" once the server's close_notify came. A bare EOF raises
        SSLEOFError (a truncation)."""
        while True:
            try:
                return self.sslobj.read(65536)
            except ssl.SSLZeroReturnError:
                return b""
            except ssl.SSLWantReadError:
                await self._more()


async def bio_client(port: int, tls: TlsFiles) -> BioClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = BioClient(reader, writer, tls.cert_pem)
    await client.handshake()
    return client


def masked_close(code: int = 1000) -> bytes:
    """A client's Close frame (masked with a zero key)."""
    return b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", code)


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def read_until(client: BioClient, marker: bytes, got: bytes = b"") -> bytes:
    while marker not in got:
        data = await client.recv()
        if not data:
            raise AssertionError(f"closed before {marker!r}: {got!r}")
        got += data
    return got


def tls_streams(runtime: Runtime, name: str = "wss") -> list[TlsStream]:
    return [
        c.transport
        for c in runtime.listeners[name].connections
        if isinstance(c.transport, TlsStream)
    ]


async def settled(read: Callable[[], int], steady: float = 1.0) -> int:
    """Poll `read` until it has not moved for `steady` seconds (deadline DEADLINE)."""
    deadline = time.monotonic() + DEADLINE
    last, since = read(), time.monotonic()
    while time.monotonic() - since < steady:
        if time.monotonic() > deadline:
            raise AssertionError(f"still moving at {read()}")
        await asyncio.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


# ----------------------------------------------------------------- memory


@pytest.mark.parametrize(
    ("size", "bound"),
    [(0, 17_000), (MIB, 20_000)],
    ids=["idle", "after-1MiB-each-way"],
)
async def test_tls_memory_per_connection_stays_bounded(
    size: int, bound: int, dataplane: Any, tls: TlsFiles, echo_process: int, tmp_path: Path
) -> None:
    """malloc in use per WSS connection, held open after one message of `size` bytes
    each way: no per-connection read buffer or BIO, so traffic leaves nothing behind
    (measured 15.1-15.5 KB both ways; BIOs of its own: 17.1 KB idle, 60 KB after 1 MiB;
    uvloop's ssl=: ~280 KB idle, ~930 KB after 1 MiB)."""
    backends = {"endpoints": [{"address": "127.0.0.1", "port": echo_process}]}
    config = https_listener(tls, backends, limits={"maxMessageBytes": 4 * MIB})
    runtime = await dataplane(snapshot(config))
    cafile = tmp_path / "ca.pem"
    cafile.write_text(tls.cert_pem)
    address = f"wss://localhost:{config['port']}/"
    await released(await hold(address, 4, size, cafile))  # warm-up: first-use allocations
    await wait_until(lambda: not runtime.listeners["wss"].connections, DEADLINE)
    count = 16
    before = malloc_in_use()
    proc = await hold(address, count, size, cafile)
    try:
        await wait_until(lambda: len(runtime.listeners["wss"].connections) == count, DEADLINE)
        per_connection = (malloc_in_use() - before) / count
    finally:
        await released(proc)
    assert per_connection < bound, f"{per_connection:.0f} B per connection"


# ----------------------------------------------------------------- handshakes


async def test_the_handshake_deadline_closes_a_silent_client_and_counts_it(
    tls: TlsFiles, backends: Any
) -> None:
    (backend,) = await backends(1)
    config = https_listener(
        tls, {"endpoints": [backend.endpoint]}, limits={"handshakeTimeoutSeconds": 0.5}
    )
    failures = TlsFailures()
    runtime = Runtime(Metrics(), tls_failures=failures)
    await runtime.apply(parse_snapshot(snapshot(config)))
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", config["port"])
        writer.write(b"\x16\x03\x01")  # the start of a record header, then nothing
        started = time.monotonic()
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5):
                assert await reader.read() == b""
        waited = time.monotonic() - started
        writer.close()
        assert 0.4 < waited < 3, waited
        assert failures.counts == {("wss", "timeout"): 1}
    finally:
        await runtime.shutdown(drain_timeout=0)


GARBAGE = {
    "plain-http": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    "websocket-upgrade": UPGRADE,
    "random": bytes((i * 167 + 13) % 256 for i in range(3000)),
    "oversized-record": b"\x16\x03\x01\xff\xff" + b"\x01" * 2000,
    "bad-hello": b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00",
    "zeros": bytes(64),
    "sslv2-header": b"\x80\x2e\x01\x03\x01" + bytes(45),
}


async def test_garbage_instead_of_a_client_hello_is_closed_at_once_without_a_traceback(
    dataplane: Any, tls: TlsFiles, backends: Any, caplog: pytest.LogCaptureFixture
) -> None:
    (backend,) = await backends(1)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    runtime = await dataplane(snapshot(config))
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: handled.append(context))
    caplog.set_level(logging.DEBUG)
    for name, garbage in GARBAGE.items():
        reader, writer = await asyncio.open_connection("127.0.0.1", config["port"])
        writer.write(garbage)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(5):  # the handshake deadline is 10 s: not waited
                while data := await reader.read(65536):
                    answer += data
        writer.close()
        assert not runtime.listeners["wss"].connections, name
        if name == "bad-hello":
            assert answer[:1] == b"\x15", answer  # OpenSSL's alert goes out first
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert tracebacks == []
    assert handled == []
    # The listener still serves.
    async with connect(url(runtime, "wss"), ssl=tls.client_context) as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"


# ----------------------------------------------------------------- closing


async def test_a_clean_close_sends_close_notify(
    dataplane: Any, tls: TlsFiles, backends: Any, http_backend: Any
) -> None:
    """After an HTTP answer with Connection: close and after a WebSocket close, the
    client reads the server's close_notify, not a bare EOF (a truncation)."""
    (echo,) = await backends(1)
    web = await http_backend()
    config = https_listener(
        tls,
        {"endpoints": [echo.endpoint]},
        rules=[
            {
                "name": "web",
                "match": {"path": "/web", "pathType": "Prefix"},
                "backends": {"endpoints": [web.endpoint]},
            }
        ],
    )
    await dataplane(snapshot(config))
    port = config["port"]

    client = await bio_client(port, tls)
    client.send(b"GET /web HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = await read_until(client, b"GET /web 0")
    assert answer.startswith(b"HTTP/1.1 200")
    assert await client.recv() == b""  # close_notify (a bare EOF raises SSLEOFError)
    client.writer.close()

    client = await bio_client(port, tls)
    client.send(UPGRADE)
    await read_until(client, b"\r\n\r\n")
    client.send(masked_close())
    reply = await read_until(client, b"\x88")
    assert reply.endswith(b"\x88\x02\x03\xe8")
    assert await client.recv() == b""
    client.writer.close()


@pytest.mark.parametrize("ending", ["close_notify", "fin"])
async def test_a_client_that_half_closes_still_gets_the_backends_close(
    ending: str, dataplane: Any, tls: TlsFiles, backends: Any
) -> None:
    """The client sends its Close frame and at once ends its side: with close_notify (TLS
    1.3 lets it read on) or with a bare TCP FIN (taken as the same: the tunnel's frame
    tracker, not TLS, says whether the client ended cleanly). The backend's Close reply
    must reach it, then the server's close_notify. uvloop's ssl= shut the connection at
    either and lost the reply."""
    (echo,) = await backends(1)
    config = https_listener(tls, {"endpoints": [echo.endpoint]})
    await dataplane(snapshot(config))
    client = await bio_client(config["port"], tls)
    client.send(UPGRADE)
    await read_until(client, b"\r\n\r\n")
    client.send(masked_close(1000))
    if ending == "close_notify":
        client.close_notify()
    else:
        client.writer.write_eof()
    reply = await read_until(client, b"\x88")
    assert reply.endswith(b"\x88\x02\x03\xe8")
    assert await client.recv() == b""
    client.writer.close()


# ----------------------------------------------------------------- flow control


async def test_a_client_that_stops_reading_a_download_stops_the_backend(
    dataplane: Any, tls: TlsFiles, http_backend: Any
) -> None:
    total = 96 * MIB
    written = [0]

    async def big(seen: Seen, reader: Any, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        block = b"x" * MIB
        while written[0] < total:
            writer.write(block)
            written[0] += len(block)
            await writer.drain()  # blocks while the data plane does not read

    backend = await http_backend(handler=big)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    runtime = await dataplane(snapshot(config))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", config["port"], ssl=tls.client_context, server_hostname="localhost"
    )
    writer.write(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    # The client reads nothing more: the backend must stop well before the end.
    stopped_at = await settled(lambda: written[0])
    assert stopped_at < total // 2, stopped_at
    (connection,) = runtime.listeners["wss"].connections
    assert connection.transport is not None
    assert connection.transport.get_write_buffer_size() < 4 * MIB
    # Reading again resumes the backend, and every byte arrives.
    received = 0
    async with asyncio.timeout(60):
        while received < total:
            chunk = await reader.read(4 * MIB)
            assert chunk, received
            received += len(chunk)
    assert received == total
    writer.close()


async def test_an_upload_to_a_backend_that_stops_reading_stops_the_client(
    dataplane: Any, tls: TlsFiles, http_backend: Any
) -> None:
    total = 96 * MIB
    resume = asyncio.Event()
    got = [0]

    async def slow(seen: Seen, reader: asyncio.StreamReader, writer: Any) -> None:
        await resume.wait()
        while got[0] < total:
            data = await reader.read(MIB)
            if not data:
                break
            got[0] += len(data)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    backend = await http_backend(handler=slow, read_bodies=False)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    await dataplane(snapshot(config))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", config["port"], ssl=tls.client_context, server_hostname="localhost"
    )
    writer.write(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n" % total)
    sent = [0]

    async def upload() -> None:
        block = b"u" * MIB
        while sent[0] < total:
            writer.write(block)
            sent[0] += len(block)
            await writer.drain()

    task = asyncio.create_task(upload())
    stopped_at = await settled(lambda: sent[0])
    assert stopped_at < total // 2, stopped_at
    resume.set()
    async with asyncio.timeout(60):
        await task
        answer = await reader.readuntil(b"ok")
    assert answer.startswith(b"HTTP/1.1 200")
    assert got[0] == total
    writer.close()


# ----------------------------------------------------------------- details


async def test_the_app_sees_the_tls_details_and_the_peer_after_close(
    dataplane: Any, tls: TlsFiles, backends: Any
) -> None:
    (echo,) = await backends(1)
    config = https_listener(tls, {"endpoints": [echo.endpoint]})
    runtime = await dataplane(snapshot(config))
    client = await bio_client(config["port"], tls)
    client.send(UPGRADE)
    await read_until(client, b"\r\n\r\n")
    (stream,) = tls_streams(runtime)
    assert stream.get_extra_info("ssl_object").version() == "TLSv1.3"
    assert stream.get_extra_info("cipher")[1] == "TLSv1.3"
    assert stream.get_extra_info("sslcontext") is runtime.listeners["wss"].front
    assert stream.get_extra_info("socket").family == socket.AF_INET
    own = client.writer.get_extra_info("sockname")
    client.writer.close()
    await wait_until(lambda: stream.is_closing(), DEADLINE)
    assert stream.get_extra_info("peername")[:2] == own[:2]  # kept after close


# ----------------------------------------------------------------- post-handshake messages


class SClient:
    """`openssl s_client` as a TLS client whose command letters send what Python's ssl
    cannot: K (a TLS 1.3 KeyUpdate that asks for the server's) and R (a TLS 1.2
    renegotiation)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = b""

    @classmethod
    async def start(cls, port: int, version: str) -> SClient:
        proc = await asyncio.create_subprocess_exec(
            "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
            f"-{version}", "-crlf",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        return cls(proc)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")

    async def expect(self, marker: bytes) -> None:
        assert self.proc.stdout is not None
        async with asyncio.timeout(DEADLINE):
            while marker not in self.out:
                data = await self.proc.stdout.read(65536)
                if not data:
                    raise AssertionError(f"s_client ended before {marker!r}:\n{self.out!r}")
                self.out += data
        self.out = self.out[self.out.index(marker) + len(marker) :]

    async def ended(self) -> bytes:
        """Everything s_client printed until it exited."""
        assert self.proc.stdout is not None
        async with asyncio.timeout(DEADLINE):
            self.out += await self.proc.stdout.read()
            await self.proc.wait()
        return self.out

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


async def test_a_key_update_is_answered_and_a_renegotiation_refused_cleanly(
    dataplane: Any, tls: TlsFiles, http_backend: Any, caplog: pytest.LogCaptureFixture
) -> None:
    web = await http_backend()
    config = https_listener(tls, {"endpoints": [web.endpoint]})
    runtime = await dataplane(snapshot(config))
    loop = asyncio.get_running_loop()
    handled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: handled.append(context))
    caplog.set_level(logging.DEBUG)
    port = config["port"]

    client = await SClient.start(port, "tls1_3")
    try:
        client.send("GET /one HTTP/1.1\nHost: localhost\n")
        await client.expect(b"GET /one 0")
        client.send("K")  # KeyUpdate, update_requested: the server must update its keys too
        await client.expect(b"KEYUPDATE")
        client.send("GET /two HTTP/1.1\nHost: localhost\n")
        await client.expect(b"GET /two 0")  # read with the client's new keys, answered
        client.send("GET /three HTTP/1.1\nHost: localhost\n")
        await client.expect(b"GET /three 0")
    finally:
        client.stop()

    client = await SClient.start(port, "tls1_2")
    try:
        client.send("GET /one HTTP/1.1\nHost: localhost\n")
        await client.expect(b"GET /one 0")
        client.send("R")  # the server refuses (OP_NO_RENEGOTIATION): the client gives up
        printed = await client.ended()
        assert b"RENEGOTIATING" in printed
        assert b"no renegotiation" in printed  # the server's no_renegotiation alert
    finally:
        client.stop()
    await wait_until(lambda: not runtime.listeners["wss"].connections, DEADLINE)
    tracebacks = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert tracebacks == []
    assert handled == []
