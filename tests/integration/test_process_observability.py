"""The running `wslb-dataplane`'s observability wiring: JSON log lines carrying each worker's
id, per-worker process metrics and build info, no `_created` series, OpenMetrics when the
scraper asks for it, `promtool check metrics` clean, and an admin port on every address
family when its host is empty."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import connect

from dataplane.admin import AdminServer
from tests.integration.conftest import (
    DataplaneProcess,
    free_port,
    listener,
    snapshot,
    wait_until,
)

OPENMETRICS = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"


async def scrape(port: int, accept: str | None = None, host: str = "127.0.0.1") -> tuple[str, str]:
    """(content type, body) of GET /metrics."""
    reader, writer = await asyncio.open_connection(host, port)
    extra = f"Accept: {accept}\r\n" if accept else ""
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    content_type = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-type:")
    )
    return content_type, body.decode()


def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


async def test_two_workers_json_logs_process_metrics_openmetrics_and_promtool(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(
        listener(backends={"endpoints": [backend.endpoint]}, limits={"maxConnections": 7})
    )
    proc: DataplaneProcess = dataplane_process(config, "--workers", "2", "--log-format", "json")
    await proc.wait_ready()
    port = config["listeners"][0]["port"]
    for index in range(4):
        async with connect(f"ws://127.0.0.1:{port}/", ping_interval=None) as ws:
            await ws.send(f"hi {index}")
            assert await ws.recv() == f"hi {index}"

    # Every log line is one JSON object; the workers' lines carry their ids.
    # Access-log lines (stdout, no logger) too, once the writer threads have written them.
    def access() -> list[dict[str, Any]]:
        return [line for line in json_lines(proc.log()) if line.get("kind") == "websocket"]

    await wait_until(lambda: len(access()) == 4)
    assert all(line["worker"] in (0, 1) and line["status"] == 101 for line in access())
    lines = [line for line in json_lines(proc.log()) if "logger" in line]
    assert lines and all(line.strip().startswith("{") for line in proc.log().splitlines())
    assert {line.get("worker") for line in lines if line["logger"] == "wslb.runtime"} == {0, 1}
    assert all("worker" not in line for line in lines if line["logger"] == "wslb.admin")

    content_type, text = await scrape(proc.admin_port)
    assert content_type.startswith("text/plain; version=0.0.4")
    for worker in ("0", "1"):
        assert f'process_resident_memory_bytes{{worker="{worker}"}}' in text
        assert f'wslb_dataplane_access_log_lines_total{{worker="{worker}"}}' in text
    assert "wslb_build_info{" in text
    # Each worker enforces, and reports, its share of the listener's limit: 7 = 4 + 3.
    assert 'wslb_dataplane_listener_max_connections{listener="ws",worker="0"} 4.0' in text
    assert 'wslb_dataplane_listener_max_connections{listener="ws",worker="1"} 3.0' in text
    assert "_created" not in text
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool not found: install Debian's prometheus package"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout + checked.stderr

    content_type, body = await scrape(proc.admin_port, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith("# EOF\n")
    assert "# TYPE wslb_dataplane_upgrades counter" in body
    assert 'process_open_fds{worker="0"}' in body
    assert "_created" not in body


async def test_single_process_json_logs_have_no_worker_and_openmetrics(
    backends: Any, dataplane_process: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc: DataplaneProcess = dataplane_process(config, "--log-format", "json")
    await proc.wait_ready()
    lines = json_lines(proc.log())
    assert any(line["logger"] == "wslb.runtime" for line in lines)
    assert all("worker" not in line for line in lines)
    content_type, body = await scrape(proc.admin_port, OPENMETRICS)
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n") and "process_start_time_seconds " in body
    assert "_created" not in body


async def test_admin_with_empty_host_listens_on_ipv4_and_ipv6() -> None:
    admin = AdminServer(CollectorRegistry(), lambda: True)
    port = free_port()
    bound = await admin.start(None, port)
    try:
        assert bound == port
        families = {sock.family.name for server in admin.servers for sock in server.sockets}
        assert families == {"AF_INET", "AF_INET6"}
        for host in ("127.0.0.1", "::1"):
            content_type, _ = await scrape(port, host=host)
            assert content_type.startswith("text/plain")
    finally:
        await admin.close()


async def test_admin_on_a_v4_address_is_not_on_ipv6() -> None:
    admin = AdminServer(CollectorRegistry(), lambda: True)
    port = await admin.start("127.0.0.1", 0)
    try:
        with pytest.raises(OSError):
            await asyncio.open_connection("::1", port)
    finally:
        await admin.close()
