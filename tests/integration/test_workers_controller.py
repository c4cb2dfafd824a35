"""`wslb-dataplane --workers 2 --controller ...` against the controller's real config server:
one session for the pod, every worker serves each pushed snapshot, one ack per version, a
snapshot one worker refuses is nacked with its error while both keep the old one, and a
worker that dies comes back with the snapshot in force."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from controller.config_server import ConfigServer
from lbwire.snapshot import Snapshot, parse_snapshot
from tests.integration.conftest import (
    ROOT,
    config_server_tls,
    free_port,
    http_get,
    listener,
    snapshot,
    wait_until,
)

LB = "team-a/edge"
TOKEN = "token-for-the-workers-test"


@dataclass
class Counted:
    """The config server's metrics hooks, counting what the data plane sent back."""

    acks: int = 0
    nacks: list[str] = field(default_factory=list)

    def pushed(self, lb: str) -> None:
        pass

    def acked(self, lb: str, seconds: float) -> None:
        self.acks += 1

    def nacked(self, lb: str, reason: str) -> None:
        self.nacks.append(reason)

    def connected(self, lb: str, count: int) -> None:
        pass


@dataclass
class Channel:
    server: ConfigServer
    port: int
    ca_file: Path
    counted: Counted


@pytest.fixture
async def channel(tmp_path: Path) -> AsyncIterator[Channel]:
    context = config_server_tls(tmp_path)
    counted = Counted()
    server = ConfigServer(
        tokens=lambda lb: TOKEN if lb == LB else None,
        ssl_context=context,
        on_change=lambda lb: None,
        metrics=counted,
    )
    port = await server.start("127.0.0.1", 0)
    yield Channel(server, port, tmp_path / "ca.crt", counted)
    await server.close()


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    admin_port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text()

    async def get(self, path: str) -> tuple[int, str]:
        return await http_get(self.admin_port, path)

    def workers(self) -> list[int]:
        """PIDs of the worker processes (children of the parent)."""
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(child) for child in children.split()]


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., Process]]:
    started: list[Process] = []

    def start(channel: Channel, workers: int = 2) -> Process:
        (tmp_path / "token").write_text(TOKEN)
        admin_port = free_port()
        log_path = tmp_path / f"dataplane-{len(started)}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dataplane.cli",
                    "--controller",
                    f"wss://127.0.0.1:{channel.port}",
                    "--load-balancer",
                    LB,
                    "--node",
                    "pod-1",
                    "--token-file",
                    str(tmp_path / "token"),
                    "--ca-file",
                    str(channel.ca_file),
                    "--state-dir",
                    str(tmp_path / "state"),
                    "--admin",
                    f"127.0.0.1:{admin_port}",
                    "--workers",
                    str(workers),
                ],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        started.append(Process(proc, admin_port, log_path))
        return started[-1]

    yield start
    for process in started:
        if process.proc.poll() is None:
            process.proc.send_signal(signal.SIGTERM)
            try:
                process.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.proc.kill()
                process.proc.wait()


def desired(version: str, *listeners: dict[str, Any]) -> Snapshot:
    return parse_snapshot(snapshot(*listeners, version=version))


def limit_lines(text: str, listener_name: str) -> set[str]:
    """The workers whose limits gauge names `listener_name`: they applied a config with it."""
    return {
        line.split('worker="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("wslb_dataplane_listener_max_connections{")
        and f'listener="{listener_name}"' in line
    }


async def echo_once(port: int, text: str) -> None:
    async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None, open_timeout=5) as ws:
        await ws.send(text)
        assert await ws.recv() == text


async def test_two_workers_share_one_session_ack_once_and_nack_together(
    channel: Channel, start_process: Callable[..., Process], backends: Any, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    good = desired("1", listener(backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, good)
    process = start_process(channel)

    deadline = time.monotonic() + 30
    while (await process.get("/readyz"))[0] != 200:
        assert process.proc.poll() is None and time.monotonic() < deadline, process.log()
        await asyncio.sleep(0.05)
    await wait_until(lambda: len(channel.server.sessions(LB)) == 1, timeout=10)
    (session,) = channel.server.sessions(LB)
    await wait_until(lambda: session.applied_version == "1", timeout=10)
    assert session.node == "pod-1"
    # Both workers serve version 1, and the controller saw one session and one ack.
    status, text = await process.get("/metrics")
    assert status == 200
    assert limit_lines(text, "ws") == {"0", "1"}, text
    assert "wslb_dataplane_config_channel_connected 1.0" in text
    assert "wslb_dataplane_config_last_ack_timestamp_seconds " in text
    assert channel.counted.acks == 1
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not found: install Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout + checked.stderr
    for index in range(6):
        await echo_once(good.listeners[0].port, f"hello {index}")
    assert (tmp_path / "state" / "snapshot.json").exists()

    # A snapshot no worker can apply (a port someone else holds): one nack, naming the
    # listener and the worker, and both workers keep serving version 1.
    taken = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    busy = taken.sockets[0].getsockname()[1]
    try:
        bad = desired(
            "2",
            listener(port=good.listeners[0].port, backends={"endpoints": [backend.endpoint]}),
            listener("clash", port=busy, backends={"endpoints": [backend.endpoint]}),
        )
        channel.server.publish(LB, bad)
        await wait_until(lambda: session.last_error is not None, timeout=20)
        assert session.last_error is not None
        assert session.last_error.reason == "ApplyFailed"
        assert session.last_error.listeners == ["clash"]
        assert "listeners[1].port" in session.last_error.message
        assert "(worker " in session.last_error.message
        assert session.applied_version == "1"
        assert channel.counted.nacks == ["ApplyFailed"]
        assert channel.counted.acks == 1
    finally:
        taken.close()
    text = (await process.get("/metrics"))[1]
    assert limit_lines(text, "ws") == {"0", "1"}
    assert limit_lines(text, "clash") == set()
    assert "wslb_dataplane_config_last_nack_timestamp_seconds " in text
    await echo_once(good.listeners[0].port, "still version 1")

    # A good version 3 reaches both workers with one more ack.
    newer = desired(
        "3",
        listener(port=good.listeners[0].port, backends={"endpoints": [backend.endpoint]}),
        listener("second", backends={"endpoints": [backend.endpoint]}),
    )
    channel.server.publish(LB, newer)
    await wait_until(lambda: session.applied_version == "3", timeout=20)
    assert channel.counted.acks == 2
    text = (await process.get("/metrics"))[1]
    assert limit_lines(text, "second") == {"0", "1"}

    # A worker killed outright comes back serving version 3 (from the parent, not the
    # controller: no new session, no new ack).
    victim = process.workers()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        pids = process.workers()
        text = (await process.get("/metrics"))[1]
        if victim not in pids and len(pids) == 2 and limit_lines(text, "second") == {"0", "1"}:
            break
        assert time.monotonic() < deadline, process.log()
        await asyncio.sleep(0.1)
    assert channel.counted.acks == 2
    assert len(channel.server.sessions(LB)) == 1
    for index in range(6):
        await echo_once(newer.listeners[1].port, f"after restart {index}")

    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.proc.wait, 30) == 0, process.log()


async def test_single_process_reports_the_channel_state(
    channel: Channel, start_process: Callable[..., Process], backends: Any
) -> None:
    (backend,) = await backends(1)
    channel.server.publish(LB, desired("1", listener(backends={"endpoints": [backend.endpoint]})))
    process = start_process(channel, workers=1)
    deadline = time.monotonic() + 30
    while (await process.get("/readyz"))[0] != 200:
        assert process.proc.poll() is None and time.monotonic() < deadline, process.log()
        await asyncio.sleep(0.05)
    await wait_until(lambda: channel.counted.acks == 1, timeout=10)
    text = (await process.get("/metrics"))[1]
    assert "wslb_dataplane_config_channel_connected 1.0" in text
    assert "wslb_dataplane_config_channel_connects_total 1.0" in text
    assert "wslb_dataplane_config_last_ack_timestamp_seconds " in text
    await channel.server.close()  # the controller goes away: the gauge says so
    deadline = time.monotonic() + 10
    while "wslb_dataplane_config_channel_connected 0.0" not in text:
        assert time.monotonic() < deadline, text
        await asyncio.sleep(0.1)
        text = (await process.get("/metrics"))[1]
    assert (await process.get("/readyz"))[0] == 200  # static stability: still serving


async def test_restart_without_controller_serves_the_persisted_snapshot_on_every_worker(
    channel: Channel, start_process: Callable[..., Process], backends: Any
) -> None:
    (backend,) = await backends(1)
    wanted = desired("7", listener(backends={"endpoints": [backend.endpoint]}))
    channel.server.publish(LB, wanted)
    first = start_process(channel)
    await wait_until(lambda: channel.counted.acks == 1, timeout=30)
    first.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.proc.wait, 30) == 0, first.log()
    await channel.server.close()  # the controller is gone when the pod comes back

    again = start_process(channel)
    deadline = time.monotonic() + 30
    while (await again.get("/readyz"))[0] != 200:
        assert again.proc.poll() is None and time.monotonic() < deadline, again.log()
        await asyncio.sleep(0.05)
    text = (await again.get("/metrics"))[1]
    assert limit_lines(text, "ws") == {"0", "1"}, text
    assert "wslb_dataplane_config_channel_connected 0.0" in text
    for index in range(4):
        await echo_once(wanted.listeners[0].port, f"from the persisted snapshot {index}")
