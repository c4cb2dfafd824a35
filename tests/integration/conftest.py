"""Integration fixtures: real echo backends and a real data plane on loopback.

`backends(n)` starts demo echo servers on free ports, `http_backend(...)` the recording
HTTP backends of http_backend.py; `dataplane(config)` applies a
snapshot to an in-process `Runtime` (under uvloop, like production) and returns it;
`dataplane_process(config)` runs `wslb-dataplane` as a subprocess for signal, worker
and file-reload tests. Everything binds to 127.0.0.1 on ports the kernel picks.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
import yaml
from websockets.asyncio.server import Server

from dataplane.certs import self_signed
from dataplane.echo import bound_port, start_echo
from dataplane.metrics import Metrics
from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration.http_backend import HttpBackend

ROOT = Path(__file__).resolve().parents[2]


def pytest_asyncio_loop_factories(config: Any, item: Any) -> dict[str, Callable[[], Any]]:
    """Run every integration test under uvloop, as the data plane runs in production."""
    return {"uvloop": uvloop.new_event_loop}


def free_port() -> int:
    """A port free right now on 127.0.0.1 (listener configs need a fixed number)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def http_get(port: int, path: str) -> tuple[int, str]:
    """GET `path` from an HTTP port on 127.0.0.1 (a data plane's admin port, the controller's
    health port): (status, body), or (0, "") while nothing listens there yet."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0, ""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body.decode()


def config_server_tls(directory: Path) -> ssl.SSLContext:
    """A config server's TLS context from a fresh self-signed certificate for 127.0.0.1,
    written to `directory` as ca.crt (what data planes trust) and tls.key."""
    cert, key = self_signed(["127.0.0.1"])
    (directory / "ca.crt").write_text(cert)
    (directory / "tls.key").write_text(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "ca.crt", directory / "tls.key")
    return context


@dataclass
class Backend:
    name: str
    port: int
    server: Server

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": self.port}

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.fixture
async def backends() -> AsyncIterator[Callable[..., Awaitable[list[Backend]]]]:
    started: list[Backend] = []

    async def start(count: int = 2, **kwargs: Any) -> list[Backend]:
        made = []
        for _ in range(count):
            name = f"echo-{len(started) + 1}"
            server = await start_echo("127.0.0.1", 0, name, **kwargs)
            backend = Backend(name, bound_port(server), server)
            started.append(backend)
            made.append(backend)
        return made

    yield start
    for backend in started:
        backend.server.close()


StartHttp = Callable[..., Awaitable[HttpBackend]]


@pytest.fixture
async def http_backend() -> AsyncIterator[StartHttp]:
    """Starts `HttpBackend`s (keyword arguments as its fields) and stops them afterwards."""
    started: list[HttpBackend] = []

    async def start(**kwargs: Any) -> HttpBackend:
        backend = await HttpBackend(**kwargs).start()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        await backend.stop()


def listener(name: str = "ws", port: int | None = None, **fields: Any) -> dict[str, Any]:
    """A listener dict with a free port; `fields` override anything (camelCase)."""
    config: dict[str, Any] = {"name": name, "address": "127.0.0.1", "port": port or free_port()}
    config.update(fields)
    return config


def snapshot(*listeners: dict[str, Any], version: str = "1", **lb: Any) -> dict[str, Any]:
    limits = {"maxConnections": 100_000, "newConnectionsPerSecond": 100_000}
    limits.update(lb.pop("limits", {}))
    return {
        "version": version,
        "loadBalancer": {"name": "test", "limits": limits, **lb},
        "listeners": list(listeners),
    }


@dataclass
class TlsFiles:
    cert_pem: str
    key_pem: str
    client_context: ssl.SSLContext = field(repr=False)


@pytest.fixture(scope="session")
def tls() -> TlsFiles:
    cert, key = self_signed(["localhost", "127.0.0.1"])
    context = ssl.create_default_context(cadata=cert)
    return TlsFiles(cert, key, context)


@pytest.fixture
async def dataplane() -> AsyncIterator[Callable[[dict[str, Any]], Awaitable[Runtime]]]:
    runtimes: list[Runtime] = []

    async def start(config: dict[str, Any]) -> Runtime:
        runtime = Runtime(Metrics())
        await runtime.apply(parse_snapshot(config))
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        await runtime.shutdown(drain_timeout=0)


def url(runtime: Runtime, name: str = "ws", path: str = "/") -> str:
    config = runtime.listeners[name].config
    scheme = "wss" if config.tls is not None else "ws"
    return f"{scheme}://127.0.0.1:{config.port}{path}"


async def wait_until(
    predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02
) -> None:
    """Poll `predicate` until true; fail the test with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def raw_request(port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes to a listener and read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        async with asyncio.timeout(read_timeout):
            return await reader.read(-1)
    finally:
        writer.close()


UPGRADE = (
    "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
)


def upgrade_request(path: str = "/", extra: str = "") -> bytes:
    return UPGRADE.format(path=path, extra=extra).encode()


@dataclass
class DataplaneProcess:
    """`wslb-dataplane` running in a subprocess on a YAML file."""

    proc: subprocess.Popen[bytes]
    config_path: Path
    admin_port: int
    log_path: Path

    def write_config(self, config: dict[str, Any]) -> None:
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(config))
        os.replace(tmp, self.config_path)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log(self) -> str:
        return self.log_path.read_text()

    async def admin(self, path: str) -> tuple[int, str]:
        return await http_get(self.admin_port, path)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.admin("/readyz"))[0] != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"data plane exited {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"data plane not ready:\n{self.log()}")
            await asyncio.sleep(0.05)


@pytest.fixture
def dataplane_process(
    tmp_path: Path,
) -> Iterator[Callable[..., DataplaneProcess]]:
    procs: list[DataplaneProcess] = []

    def start(config: dict[str, Any], *args: str) -> DataplaneProcess:
        index = len(procs)
        config_path = tmp_path / f"dataplane-{index}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        admin_port = free_port()
        log_path = tmp_path / f"dataplane-{index}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dataplane.cli",
                    "--config",
                    str(config_path),
                    "--admin",
                    f"127.0.0.1:{admin_port}",
                    *args,
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        running = DataplaneProcess(proc, config_path, admin_port, log_path)
        procs.append(running)
        return running

    yield start
    for running in procs:
        if running.proc.poll() is None:
            running.proc.send_signal(signal.SIGTERM)
            try:
                running.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait()


class _LoopErrors(logging.Handler):
    """What asyncio logs at ERROR that points at the data plane: an exception escaping a
    loop callback through dataplane code, or a future or task whose exception nobody
    read. (Exceptions of the tests' own helpers, e.g. a backend's handler cancelled at
    teardown, are theirs, not the product's.)"""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        trace = "".join(traceback.format_exception(*record.exc_info)) if record.exc_info else ""
        if "never retrieved" in text or f"{os.sep}dataplane{os.sep}" in trace:
            self.messages.append(f"{text}\n{trace}")


@pytest.fixture(autouse=True)
def no_loop_errors() -> Iterator[None]:
    """Fail a test during which asyncio logged an error of the data plane's: those pass
    silently otherwise (a compiled-only TypeError in a timer callback did)."""
    handler = _LoopErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
        gc.collect()  # an unread exception is reported when its future is freed
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, f"asyncio logged errors: {handler.messages}"
