"""`promtool check metrics` on real scrapes: the running `wslb-dataplane` (two workers, so the
parent's merge is what is checked) after known WebSocket and plain HTTP traffic, the new
collectors served by the real admin server, alone and merged as two workers, and the
controller's health server."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from controller.main import HealthServer
from controller.metrics import ControllerMetrics
from dataplane.access_log import AccessLog, AccessLogCollector
from dataplane.admin import AdminServer
from dataplane.metrics import Metrics
from dataplane.process_metrics import Observability
from dataplane.workers import _Merged
from lbwire.snapshot import Snapshot
from tests.integration.conftest import Backend, DataplaneProcess, listener, snapshot
from tests.integration.http_backend import HttpBackend
from tests.monitoring.http_traffic import (
    GONE_REQUESTS,
    HEAD_REQUESTS,
    OK_REQUESTS,
    http_listener,
    http_session,
)
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


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels` (over workers)."""
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


# The fields of a `kind=http` access-log line, in the order docs/observability.md gives.
HTTP_LINE_FIELDS = [
    "time",
    "kind",
    "listener",
    "client_addr",
    "client_port",
    "forwarded_for",
    "host",
    "method",
    "path",
    "rule",
    "backend",
    "status",
    "reason",
    "duration_seconds",
    "bytes_from_client",
    "bytes_to_client",
    "worker",
]


async def test_running_data_plane_after_http_requests_passes_promtool(
    dataplane_process: Callable[..., DataplaneProcess],
) -> None:
    """Plain HTTP through `wslb-dataplane` with two workers: the request counter by rule,
    method and status class, the duration histogram, the backend error by kind and the idle
    pool gauge carry exactly the session's counts, promtool finds nothing to say about
    them, and each request wrote one `kind=http` access-log line with the documented
    fields."""
    backend = await HttpBackend().start()
    try:
        config = snapshot(http_listener("web", backend))
        process = dataplane_process(config, "--workers", "2")
        await process.wait_ready()
        await http_session(config["listeners"][0]["port"])
        requests = "wslb_dataplane_http_requests_total"
        text = ""
        deadline = asyncio.get_running_loop().time() + 10
        while total(text, requests, rule="gone") < GONE_REQUESTS:
            assert asyncio.get_running_loop().time() < deadline, text
            status, text = await process.admin("/metrics")
            assert status == 200
            await asyncio.sleep(0.1)
    finally:
        await backend.stop()
    web = {"listener": "web"}
    ok = {**web, "rule": "default", "code": "2xx"}
    assert total(text, requests, **ok, method="GET") == OK_REQUESTS
    assert total(text, requests, **ok, method="HEAD") == HEAD_REQUESTS
    assert total(text, requests, **web, rule="gone", method="GET", code="5xx") == GONE_REQUESTS
    assert total(text, requests, **web) == OK_REQUESTS + HEAD_REQUESTS + GONE_REQUESTS
    seconds = "wslb_dataplane_http_request_duration_seconds"
    assert total(text, f"{seconds}_count", **web, rule="default") == OK_REQUESTS + HEAD_REQUESTS
    assert total(text, f"{seconds}_bucket", **web, rule="gone", le="+Inf") == GONE_REQUESTS
    errors = "wslb_dataplane_http_backend_errors_total"
    assert total(text, errors, **web, rule="gone", kind="connect") == GONE_REQUESTS
    assert total(text, errors, **web, rule="default") == 0
    assert total(text, "wslb_dataplane_http_pool_idle_connections", **web) >= 1
    assert 'worker="0"' in text and 'worker="1"' in text
    result = check_metrics(text)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr

    lines = [line for line in process.log().splitlines() if " kind=http " in line]
    assert len(lines) == OK_REQUESTS + HEAD_REQUESTS + GONE_REQUESTS, process.log()
    for line in lines:
        assert [item.split("=", 1)[0] for item in line.split(" ")] == HTTP_LINE_FIELDS, line
    gone = [line for line in lines if " rule=gone " in line]
    assert len(gone) == GONE_REQUESTS
    assert " path=/gone/x " in gone[0] and " status=502 " in gone[0], gone[0]


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


async def test_controller_metrics_served_by_its_health_server_pass_promtool() -> None:
    """Every controller family with children (a data plane connected, pushes, an ack, a
    nack, a Listener's Programmed state), scraped from the real health server."""
    metrics = ControllerMetrics()
    metrics.connected("apps/chat", 1)
    metrics.pushed("apps/chat")
    metrics.acked("apps/chat", 0.02)
    metrics.nacked("apps/chat", "InvalidConfig")
    metrics.propagated("apps/chat", 0.3)
    metrics.listener_programmed("apps/ws", "chat", False, "Rejected")
    metrics.event("Listener", "ADDED")
    metrics.reconciled("ok")
    metrics.built(0.001, True)
    health = HealthServer(metrics, lambda: True)
    port = await health.start("127.0.0.1", 0)
    try:
        text = await scrape(port)
    finally:
        await health.close()
    assert 'wslb_controller_listener_programmed{listener="ws"' in text
    result = check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == ""
