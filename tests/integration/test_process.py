"""The `wslb-dataplane` process: SIGTERM drain, reload on SIGHUP and file change,
refusal of a bad file, workers."""

from __future__ import annotations

import asyncio
import copy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import ROOT, free_port, listener, snapshot


def ws_url(config: dict[str, Any], index: int = 0) -> str:
    return f"ws://127.0.0.1:{config['listeners'][index]['port']}/"


async def test_sigterm_drains_then_closes_1001_and_exits_0(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(drainTimeoutSeconds=1.5, backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config)
    await proc.wait_ready()
    ws = await connect(ws_url(config), ping_interval=None)
    proc.signal(signal.SIGTERM)
    # Not ready any more, and the port stops accepting ...
    deadline = time.monotonic() + 5
    while (await proc.admin("/readyz"))[0] == 200:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    with pytest.raises(OSError):
        await connect(ws_url(config), ping_interval=None, open_timeout=1)
    # ... while the live connection keeps working until the drain timeout.
    await ws.send("during drain")
    assert await ws.recv() == "during drain"
    await asyncio.wait_for(ws.wait_closed(), 10)
    assert ws.close_code == 1001
    assert await asyncio.to_thread(proc.proc.wait, 10) == 0


async def test_file_change_and_sighup_reload_and_bad_file_keeps_old(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config)
    await proc.wait_ready()
    held = await connect(ws_url(config), ping_interval=None)

    added = copy.deepcopy(config)
    added["version"] = "2"
    added["listeners"].append(listener("second", backends={"endpoints": [backend.endpoint]}))
    proc.write_config(added)
    deadline = time.monotonic() + 10
    while True:  # the file watcher picks the change up
        try:
            async with connect(ws_url(added, 1), ping_interval=None, open_timeout=1) as ws:
                await ws.send("new port")
                assert await ws.recv() == "new port"
                break
        except OSError:
            assert time.monotonic() < deadline, proc.log()
            await asyncio.sleep(0.1)

    bad = copy.deepcopy(added)
    bad["listeners"][0]["idleTimeoutSeconds"] = -5
    proc.write_config(bad)
    deadline = time.monotonic() + 10
    while "config refused" not in proc.log():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert "listeners[0].idleTimeoutSeconds" in proc.log()
    assert str(proc.config_path) in proc.log()
    await held.send("old config serves")
    assert await held.recv() == "old config serves"

    await held.close()


async def test_sighup_reloads_when_file_watching_is_off(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config, "--no-watch")
    await proc.wait_ready()
    changed = copy.deepcopy(config)
    changed["version"] = "3"
    proc.write_config(changed)
    await asyncio.sleep(1.5)  # longer than the watch interval: nothing may change by itself
    assert 'version="1"' in (await proc.admin("/metrics"))[1]
    proc.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while 'version="3"' not in (await proc.admin("/metrics"))[1]:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)


def test_bad_file_at_start_exits_2_naming_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listeners:\n  - name: ws\n    port: 70000\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataplane.cli",
            "--config",
            str(path),
            "--admin",
            f"127.0.0.1:{free_port()}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert str(path) in done.stderr
    assert "listeners[0].port" in done.stderr
    assert "Traceback" not in done.stderr


def test_taken_admin_port_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("listeners: []\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        admin = f"127.0.0.1:{port}"
        done = subprocess.run(
            [sys.executable, "-m", "dataplane.cli", "--config", str(path), "--admin", admin],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=30,
            check=False,
        )
    assert done.returncode == 2
    assert f"admin address 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_two_workers_share_the_port_and_merge_metrics(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config, "--workers", "2")
    await proc.wait_ready()
    for _ in range(20):
        async with connect(ws_url(config), ping_interval=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
    status, text = await proc.admin("/metrics")
    assert status == 200
    served = {
        line.split('worker="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("wslb_dataplane_upgrades_total{") and not line.endswith(" 0.0")
    }
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("wslb_dataplane_upgrades_total{") and 'code="101"' in line
    )
    assert total == 20
    assert served <= {"0", "1"} and served
    proc.signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, 20) == 0


def test_plaintext_config_channel_is_refused(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "dataplane.cli",
            "--controller",
            "ws://127.0.0.1:1",
            "--load-balancer",
            "ns/lb",
            "--token-file",
            str(token),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert "wss://" in done.stderr
