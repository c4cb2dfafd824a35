"""Debian's Prometheus scrapes a running `wslb-dataplane` with the chart's rules loaded: every
rule evaluates without error, one alert is driven to firing and seen in the alerts API, and
every dashboard query whose metrics the data plane exposes returns data after a known session
(connections, messages, an idle close, a refused request, plain HTTP requests answered 200
and 502)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import (
    Backend,
    DataplaneProcess,
    listener,
    raw_request,
    snapshot,
)
from tests.integration.http_backend import HttpBackend
from tests.monitoring import prometheus as prometheus_server
from tests.monitoring.http_traffic import http_listener, http_session
from tests.monitoring.known import RULES, metric_names_in
from tests.monitoring.prometheus import Prometheus
from tests.monitoring.test_dashboard import expressions

pytestmark = pytest.mark.integration

if not prometheus_server.available():
    pytest.skip(prometheus_server.MISSING, allow_module_level=True)

# What the chart's PodMonitor gives every data-plane target in a cluster.
TARGET_LABELS = {"namespace": "apps", "load_balancer": "chat", "pod": "chat-wslb-0"}


@pytest.fixture
def prometheus() -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        scrape = {
            "job_name": "wslb-dataplane",
            "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"], "labels": TARGET_LABELS}],
        }
        started.append(prometheus_server.start([scrape], yaml.safe_load(RULES.read_text())))
        return started[-1]

    yield start
    for running in started:
        running.stop()


async def poll(check: Callable[[], Any], what: str, prom: Prometheus, timeout: float = 30) -> Any:
    return await asyncio.to_thread(prom.poll, check, what, timeout)


async def known_session(port: int) -> None:
    """Three tunnels with four messages each, one left idle until the proxy closes it, and one
    request refused before the upgrade."""
    for n in range(3):
        async with connect(f"ws://127.0.0.1:{port}/chat?token=x") as ws:
            for i in range(4):
                await ws.send(f"m{n}.{i}")
                assert await ws.recv() == f"m{n}.{i}"
    async with connect(f"ws://127.0.0.1:{port}/idle") as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1001
    answer = await raw_request(port, b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 4"), answer


async def test_rules_evaluate_an_alert_fires_and_dashboard_queries_return_data(
    backends: Callable[..., Awaitable[list[Backend]]],
    dataplane_process: Callable[..., DataplaneProcess],
    prometheus: Callable[[int], Prometheus],
) -> None:
    (echo,) = await backends(1)
    http_backend = await HttpBackend().start()
    try:
        config = snapshot(
            listener("ws", idleTimeoutSeconds=1, backends={"endpoints": [echo.endpoint]}),
            http_listener("web", http_backend),
        )
        process = dataplane_process(config)
        await process.wait_ready()
        prom = prometheus(process.admin_port)
        await known_session(config["listeners"][0]["port"])
        await http_session(config["listeners"][1]["port"])
    finally:
        await http_backend.stop()

    def idle_close_scraped() -> bool:
        return bool(prom.query('wslb_dataplane_idle_timeouts_total{listener="ws"} == 1'))

    def http_error_scraped() -> bool:
        promql = 'wslb_dataplane_http_backend_errors_total{listener="web", kind="connect"} == 1'
        return bool(prom.query(promql))

    await poll(idle_close_scraped, "the idle close not scraped", prom)
    await poll(http_error_scraped, "the HTTP backend error not scraped", prom)

    # Every rule of the chart evaluates against the real series without error.
    def rules_evaluated() -> list[dict[str, Any]] | None:
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if rules and all(r["lastEvaluation"][:4] != "0001" for r in rules) else None

    rules = await poll(rules_evaluated, "rules not evaluated", prom)
    source = yaml.safe_load(RULES.read_text())["groups"]
    assert len(rules) == sum(len(group["rules"]) for group in source)
    assert [
        (r["name"], r["health"], r.get("lastError", "")) for r in rules if r["health"] != "ok"
    ] == []
    # Healthy traffic: nothing fires (the controller is not scraped here, so it is "down").
    firing = {a["labels"]["alertname"] for a in prom.get("/api/v1/alerts")["data"]["alerts"]}
    assert firing <= {"WslbControllerDown"}, firing

    # Configs the data plane refuses drive WslbConfigReloadRejected to firing. Two of them:
    # the `rejected` series is born at 1 on the first, which increase() cannot see.
    port = config["listeners"][0]["port"]
    for attempt in (1, 2):
        bad = snapshot(
            listener("ws", port=port, idleTimeoutSeconds=-attempt), config["listeners"][1]
        )
        process.write_config(bad)

        def rejected_scraped(attempt: int = attempt) -> bool:
            promql = f'wslb_dataplane_config_reloads_total{{result="rejected"}} == {attempt}'
            return bool(prom.query(promql))

        await poll(rejected_scraped, f"rejection {attempt} not scraped", prom)

    def reload_rejected_firing() -> dict[str, Any] | None:
        for alert in prom.get("/api/v1/alerts")["data"]["alerts"]:
            if alert["labels"]["alertname"] == "WslbConfigReloadRejected":
                return dict(alert) if alert["state"] == "firing" else None
        return None

    alert = await poll(reload_rejected_firing, "WslbConfigReloadRejected not firing", prom)
    assert alert["labels"] == {
        "alertname": "WslbConfigReloadRejected",
        "severity": "warning",
        **TARGET_LABELS,
    }
    assert alert["annotations"]["description"].startswith("Data plane apps/chat-wslb-0 refused")

    # Every dashboard query over metrics this data plane exposes returns data.
    present = {r["metric"]["__name__"] for r in prom.query('{job="wslb-dataplane"}')}
    answered, silent = [], []
    for title, expr in expressions().items():
        names = metric_names_in(expr) - {"up"}
        if names and names <= present:
            (answered if prom.query(expr) else silent).append(title)
    assert silent == []
    assert len(answered) >= 15, answered
    assert {title.rsplit("/", 1)[0] for title in answered} >= {
        "HTTP requests /s by listener and rule",
        "HTTP requests /s by status class and method",
        "HTTP 5xx ratio",
        "HTTP request latency",
        "HTTP backend errors /s by kind",
        "Idle pooled backend connections",
    }, answered
