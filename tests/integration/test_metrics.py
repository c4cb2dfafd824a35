"""Metric values after a known traffic pattern, read from a real /metrics scrape."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from dataplane.admin import AdminServer
from tests.integration.conftest import listener, raw_request, snapshot, url, wait_until


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_after_known_traffic(backends: Any, dataplane: Any) -> None:
    first, second = await backends(2)
    config = listener(backends={"scheduler": "rr", "endpoints": [first.endpoint, second.endpoint]})
    runtime = await dataplane(snapshot(config))
    admin = AdminServer(runtime.metrics.registry, lambda: runtime.ready)
    port = await admin.start("127.0.0.1", 0)
    try:
        for _ in range(3):
            async with connect(url(runtime), ping_interval=None, compression=None) as ws:
                for i in range(4):
                    await ws.send(f"message {i}")
                    assert await ws.recv() == f"message {i}"
        # A plain GET is proxied (issue 10): the websockets backend answers any path but
        # its demo page, /api/info and /healthz with 426.
        answer = await raw_request(
            runtime.listeners["ws"].config.port,
            b"GET /upgrade-only HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        assert answer.startswith(b"HTTP/1.1 426")
        held = await connect(url(runtime), ping_interval=None)
        await wait_until(
            lambda: (
                runtime.metrics.registry.get_sample_value(
                    "wslb_dataplane_connections_active", {"listener": "ws"}
                )
                == 1
            )
        )
        scrape = await raw_request(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = scrape.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        found = samples(body.decode())
        ws = {"listener": "ws"}
        assert value(found, "wslb_dataplane_upgrades_total", code="101", **ws) == 4
        assert value(found, "wslb_dataplane_upgrades_total", code="426", **ws) == 0
        http = {"rule": "default", "method": "GET", "code": "4xx", **ws}
        assert value(found, "wslb_dataplane_http_requests_total", **http) == 1
        assert (
            value(found, "wslb_dataplane_http_request_duration_seconds_count", rule="default", **ws)
            == 1
        )
        assert value(found, "wslb_dataplane_http_pool_idle_connections", **ws) == 0
        assert (
            value(found, "wslb_dataplane_messages_total", direction="client_to_backend", **ws) == 12
        )
        assert (
            value(found, "wslb_dataplane_messages_total", direction="backend_to_client", **ws) == 12
        )
        assert (
            value(found, "wslb_dataplane_closes_total", code="1000", initiator="client", **ws) == 3
        )
        assert value(found, "wslb_dataplane_connection_duration_seconds_count", **ws) == 3
        assert value(found, "wslb_dataplane_handshake_duration_seconds_count", **ws) == 4
        assert value(found, "wslb_dataplane_connections_active", **ws) == 1
        assert value(
            found, "wslb_dataplane_bytes_total", direction="client_to_backend", **ws
        ) > 12 * len("message 0")
        for backend in (first, second):
            assert (
                value(
                    found,
                    "wslb_dataplane_backend_healthy",
                    backend=f"127.0.0.1:{backend.port}",
                    **ws,
                )
                == 1
            )
        assert value(found, "wslb_dataplane_ready") == 1
        assert value(found, "wslb_dataplane_config_reloads_total", result="applied") == 1
        for key in found:
            assert "127.0.0.1" not in dict(key[1]).get("client", ""), "no client address labels"
        await held.close()
        health = await raw_request(port, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200")
    finally:
        await admin.close()
