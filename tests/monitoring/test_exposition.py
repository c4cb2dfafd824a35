"""`promtool check metrics` on real scrapes: the running `wslb-dataplane` (two workers, so the
parent's merge is what is checked) after known traffic, and the new collectors served by the
real admin server, alone and merged as two workers."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from websockets.asyncio.client import connect

from dataplane.access_log import AccessLog, AccessLogCollector
from dataplane.admin import AdminServer
from dataplane.metrics import Metrics
from dataplane.process_metrics import Observability
from dataplane.workers import _Merged
from lbwire.snapshot import Snapshot
from tests.integration.conftest import Backend, DataplaneProcess, listener, snapshot
from tests.monitoring.known import promtool
from tests.unit.test_process_metrics import https_listener

pytestmark = pytest.mark.integration


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )


async def scrape(port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await reader.read(-1)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


async def test_running_data_plane_with_two_workers_passes_promtool(
    backends: Callable[..., Awaitable[list[Backend]]],
    dataplane_process: Callable[..., DataplaneProcess],
) -> None:
    (echo,) = await backends(1)
    config = snapshot(listener("ws", backends={"endpoints": [echo.endpoint]}))
    process = dataplane_process(config, "--workers", "2")
    await process.wait_ready()
    port = config["listeners"][0]["port"]
    for _ in range(4):
        async with connect(f"ws://127.0.0.1:{port}/chat") as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
    text = ""
    deadline = asyncio.get_running_loop().time() + 10
    while 'code="101"' not in text or "wslb_dataplane_closes_total{" not in text:
        assert asyncio.get_running_loop().time() < deadline, text
        status, text = await process.admin("/metrics")
        assert status == 200
        await asyncio.sleep(0.1)
    assert 'worker="0"' in text and 'worker="1"' in text
    result = check_metrics(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


async def test_new_collectors_pass_promtool_alone_and_merged() -> None:
    texts: list[tuple[int, str]] = []
    for worker in (0, 1):
        metrics = Metrics()
        wss = https_listener("wss", names=["chat.example.com"])
        snap = Snapshot(listeners=[wss])
        made = Observability.install(
            metrics.registry, lambda snap=snap: snap, workers=2, controller_mode=True
        )
        made.tls.observe("wss", TimeoutError())
        made.channel.connected(True)
        made.channel.acked()
        metrics.registry.register(AccessLogCollector(AccessLog()))
        admin = AdminServer(metrics.registry, lambda: True)
        port = await admin.start("127.0.0.1", 0)
        try:
            text = await scrape(port)
        finally:
            await admin.close()
        for name in (
            "wslb_build_info{",
            "wslb_dataplane_tls_handshake_failures_total{",
            "wslb_dataplane_certificate_expiry_timestamp_seconds{",
            "wslb_dataplane_listener_max_connections{",
            "wslb_dataplane_config_channel_connected ",
            "process_resident_memory_bytes ",
        ):
            assert name in text, name
        result = check_metrics(text)
        assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
        texts.append((worker, text))
    merged = CollectorRegistry()
    merged.register(_Merged(texts))
    merged_text = generate_latest(merged).decode()
    assert 'process_open_fds{worker="1"}' in merged_text
    result = check_metrics(merged_text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
