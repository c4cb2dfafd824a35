"""A real Prometheus scrapes the data plane: Debian's prometheus against `wslb-dataplane`.

The data plane runs as a subprocess with its admin port; Prometheus scrapes `/metrics`
there every second. After known traffic (3 connections x 4 messages), Prometheus's own
query API must show exactly that traffic, and the target must be up and healthy.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import listener, snapshot
from tests.monitoring import prometheus as prometheus_server
from tests.monitoring.prometheus import Prometheus

JOB = "wslb-dataplane"

if not prometheus_server.available():
    pytest.skip(prometheus_server.MISSING, allow_module_level=True)


def scalar(prom: Prometheus, promql: str) -> float | None:
    """The single value of an instant query, None while it has no series."""
    result = prom.query(promql)
    if not result:
        return None
    assert len(result) == 1, result
    return float(result[0]["value"][1])


@pytest.fixture
def prometheus() -> Iterator[Any]:
    """Start Debian's Prometheus scraping a data plane's admin port (the shared launcher)."""
    started: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        scrape = {
            "job_name": JOB,
            "metrics_path": "/metrics",
            "static_configs": [{"targets": [f"127.0.0.1:{admin_port}"]}],
        }
        running = prometheus_server.start([scrape], {"groups": []})
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


async def poll(check: Any, what: str, prom: Prometheus, timeout: float = 15.0) -> Any:
    """Call `check()` (in a thread: it does blocking HTTP) until truthy, or fail with `what`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = await asyncio.to_thread(check)
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            last = error
        if last and not isinstance(last, Exception):
            return last
        if prom.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {prom.proc.returncode}:\n{prom.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s; last: {last!r}\n{prom.log()}")
        await asyncio.sleep(0.2)


async def test_prometheus_scrapes_dataplane_traffic(
    backends: Any, dataplane_process: Any, prometheus: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    proc = dataplane_process(config)
    prom: Prometheus = prometheus(proc.admin_port)
    await proc.wait_ready()

    def ready() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{prom.port}/-/ready", timeout=2) as r:
            return bool(r.status == 200)

    await poll(ready, "prometheus not ready", prom)

    port = config["listeners"][0]["port"]
    for n in range(3):
        async with connect(f"ws://127.0.0.1:{port}/") as ws:
            for i in range(4):
                await ws.send(f"message {n}.{i}")
                assert await ws.recv() == f"message {n}.{i}"

    def up() -> bool:
        return scalar(prom, f'up{{job="{JOB}"}}') == 1

    def upgrades() -> bool:
        return scalar(prom, f'sum(wslb_dataplane_upgrades_total{{job="{JOB}",code="101"}})') == 3

    def messages(direction: str) -> Callable[[], bool]:
        promql = f'sum(wslb_dataplane_messages_total{{job="{JOB}",direction="{direction}"}})'
        return lambda: scalar(prom, promql) == 12

    await poll(up, "up != 1", prom)
    await poll(upgrades, "wslb_dataplane_upgrades_total{code='101'} != 3", prom)
    await poll(messages("client_to_backend"), "client_to_backend messages != 12", prom)
    # The echo answered every message: the other direction counts the same.
    await poll(messages("backend_to_client"), "backend_to_client messages != 12", prom)

    def target_healthy() -> dict[str, Any] | None:
        data = prom.get("/api/v1/targets", state="active")
        assert data["status"] == "success", data
        for target in data["data"]["activeTargets"]:
            if target["labels"].get("job") == JOB and target["health"] == "up":
                return dict(target)
        return None

    target = await poll(target_healthy, "target not healthy", prom)
    assert target["scrapeUrl"] == f"http://127.0.0.1:{proc.admin_port}/metrics"
    assert target["lastError"] == ""
