"""The access log of a running `wslb-dataplane`: one line on stdout per WebSocket
connection when it ends and one per refused handshake, with the fields a real client's
session produced; none for a listener that switched its log off."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.conftest import ROOT, free_port, listener, snapshot, wait_until

pytestmark = pytest.mark.integration

LOGFMT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')
IDLE = 0.5  # the tunnel's idle timeout: the proxy closes it with 1001


def parse(line: str, fmt: str) -> dict[str, Any]:
    """A reader independent of the writer; text values come back typed as JSON gives them."""
    if fmt == "json":
        parsed: dict[str, Any] = json.loads(line)
        return parsed
    out: dict[str, Any] = {}
    for key, value in LOGFMT.findall(line):
        if value.startswith('"'):
            out[key] = json.loads(value)
        elif value == "-":
            out[key] = None
        else:
            try:
                out[key] = json.loads(value)
            except ValueError:
                out[key] = value
    return out


class Process:
    """The data plane with stdout (access log) and stderr (its own log) kept apart."""

    def __init__(self, tmp_path: Path, config: dict[str, Any], fmt: str) -> None:
        path = tmp_path / "dataplane.yaml"
        path.write_text(yaml.safe_dump(config))
        self.admin_port = free_port()
        self.stdout_path = tmp_path / "stdout.log"
        self.stderr_path = tmp_path / "stderr.log"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            command = [sys.executable, "-m", "dataplane.cli", "--config", str(path)]
            command += ["--admin", f"127.0.0.1:{self.admin_port}", "--log-format", fmt]
            self.proc = subprocess.Popen(
                command,
                stdout=out,
                stderr=err,
                cwd=ROOT,
            )

    def lines(self) -> list[str]:
        return self.stdout_path.read_text().splitlines()

    def applied(self) -> bool:
        """The config is in force (its own log says so); fails fast if the process died."""
        if self.proc.poll() is not None:
            raise AssertionError(f"data plane exited:\n{self.stderr_path.read_text()}")
        return b"applied config" in self.stderr_path.read_bytes()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def dataplane_stdout(tmp_path: Path) -> Iterator[Callable[[dict[str, Any], str], Process]]:
    started: list[Process] = []

    def start(config: dict[str, Any], fmt: str) -> Process:
        process = Process(tmp_path, config, fmt)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_one_line_per_connection_with_what_happened_on_it(
    fmt: str, backends: Any, dataplane_stdout: Any
) -> None:
    (backend,) = await backends(1)
    endpoints = {"endpoints": [backend.endpoint]}
    tunnel = listener(
        "chat", backends=endpoints, idleTimeoutSeconds=IDLE, keepalive={"intervalSeconds": 0}
    )
    guarded = listener("guarded", backends=endpoints, allowedOrigins=["https://app.example"])
    quiet = listener("quiet", backends=endpoints, accessLog={"enabled": False})
    process: Process = dataplane_stdout(snapshot(tunnel, guarded, quiet), fmt)
    await wait_until(process.applied, timeout=15)

    # A listener with its log off: a whole session, no line.
    async with connect(f"ws://127.0.0.1:{quiet['port']}/", ping_interval=None) as ws:
        await ws.send("unlogged")
        assert await ws.recv() == "unlogged"

    # A refused handshake: one line with its status and reason.
    with pytest.raises(InvalidStatus):
        async with connect(
            f"ws://127.0.0.1:{guarded['port']}/door?key=1",
            origin="https://evil.example",  # type: ignore[arg-type]
        ):
            pass

    # A tunnel: three messages each way, then silence until the proxy's idle close.
    port = tunnel["port"]
    async with connect(
        f"ws://127.0.0.1:{port}/room/7?token=secret",
        ping_interval=None,
        additional_headers={"X-Forwarded-For": "203.0.113.9"},
    ) as ws:
        local_port = ws.transport.get_extra_info("sockname")[1]
        for text in ("one", "two", "three"):
            await ws.send(text)
            assert await ws.recv() == text
        opened = time.monotonic()
        with pytest.raises(ConnectionClosed):
            await ws.recv()
        waited = time.monotonic() - opened
    assert ws.close_code == 1001
    await wait_until(lambda: len(process.lines()) >= 2, timeout=10)

    lines = process.lines()
    assert len(lines) == 2, lines
    refused, session = (parse(line, fmt) for line in lines)
    assert (refused["listener"], refused["status"], refused["reason"]) == (
        "guarded",
        403,
        "origin",
    )
    assert (refused["path"], refused["backend"], refused["close_code"]) == ("/door", None, None)

    assert session["kind"] == "websocket"
    assert session["listener"] == "chat"
    assert (session["client_addr"], session["client_port"]) == ("127.0.0.1", local_port)
    assert session["host"] == f"127.0.0.1:{port}"
    assert session["method"] == "GET"
    assert session["path"] == "/room/7"  # no query string: it may carry a token
    assert session["forwarded_for"] == "203.0.113.9, 127.0.0.1"
    assert session["backend"] == f"127.0.0.1:{backend.port}"
    assert (session["status"], session["reason"]) == (101, None)
    assert IDLE <= session["duration_seconds"] < IDLE + waited + 10
    assert (session["messages_from_client"], session["messages_to_client"]) == (3, 3)
    # Masked client frames: 6 header bytes + payload each, plus the client's Close reply;
    # unmasked backend frames: 2 + payload, plus nothing else the client sent.
    payload = len("one") + len("two") + len("three")
    assert 3 * 6 + payload <= session["bytes_from_client"] <= 3 * 6 + payload + 64
    assert 3 * 2 + payload <= session["bytes_to_client"] <= 3 * 2 + payload + 64
    assert (session["close_code"], session["closed_by"]) == (1001, "proxy")
    assert "worker" not in session
