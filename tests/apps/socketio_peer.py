"""Run the Socket.IO peers of tests/apps/socketio: `server.js` as a backend, `client.js` once.

The npm packages (`socket.io`, `socket.io-client`, pinned in package-lock.json) are
installed by tests/apps/npm-install.sh into a cache directory keyed by the lock, and found
through NODE_PATH. A machine without node or npm fails with a message saying what to
install (hack/ci-packages.sh installs them), never a skip: these tests are what shows that a
real polling-then-upgrade app works through the load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PEER = Path(__file__).resolve().parent / "socketio"
INSTALL = Path(__file__).resolve().parent / "npm-install.sh"


class PeerUnavailable(Exception):
    """The Socket.IO peer cannot run here; the message says what is missing."""


def install() -> Path:
    """`npm ci` the pinned packages (once per lock) and return their node_modules."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise PeerUnavailable(
            "node and npm are needed for the Socket.IO tests: install Debian's nodejs and "
            "npm packages (hack/ci-packages.sh does)"
        )
    done = subprocess.run(
        ["bash", str(INSTALL), str(PEER)], capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise PeerUnavailable(f"{INSTALL} {PEER} failed:\n{done.stderr}")
    return Path(done.stdout.strip()) / "node_modules"


@dataclass
class SocketIoServer:
    """One `server.js` process: a backend with its own Socket.IO sessions."""

    name: str
    proc: asyncio.subprocess.Process
    port: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> dict[str, Any]:
        return {"address": "127.0.0.1", "port": self.port}

    def seen(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.events.append(json.loads(line))

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


def _env(node_modules: Path) -> dict[str, str]:
    return {**os.environ, "NODE_PATH": str(node_modules)}


async def start_server(node_modules: Path, name: str, timeout: float = 15.0) -> SocketIoServer:
    """Start `server.js` on a free loopback port; return once it reports the port."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(PEER / "server.js"),
        name,
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=_env(node_modules),
    )
    server = SocketIoServer(name, proc)
    server._reader = asyncio.create_task(server._read())
    try:
        async with asyncio.timeout(timeout):
            while not server.seen("listening"):
                if proc.returncode is not None or server._reader.done():
                    raise PeerUnavailable(f"socket.io server {name} exited {proc.returncode}")
                await asyncio.sleep(0.02)
    except BaseException:
        await server.stop()
        raise
    server.port = int(server.seen("listening")[0]["port"])
    return server


async def run_client(
    node_modules: Path, url: str, count: int = 3, seconds: float = 10.0, ca: Path | None = None
) -> dict[str, Any]:
    """Run `client.js` once against `url` (https: verified against the PEM file `ca`): what
    it saw (connected, transports, acks, errors, final transport, cookie names) and its exit
    code as `code`."""
    env = _env(node_modules)
    if ca is not None:
        env["WSLB_TEST_CA"] = str(ca)
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(PEER / "client.js"),
        url,
        str(count),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), seconds + 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().splitlines()
    if not lines:
        raise AssertionError(f"client.js printed nothing (exit {proc.returncode}):\n{err.decode()}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["code"] = proc.returncode
    return result
