"""Debian's Prometheus scrapes a running `wslb-dataplane` with the chart's rules loaded: every
rule evaluates without error, one alert is driven to firing and seen in the alerts API, and
every dashboard query whose metrics the data plane exposes returns data after a known session
(connections, messages, an idle close, a refused request)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.integration.conftest import (
    Backend,
    DataplaneProcess,
    free_port,
    listener,
    raw_request,
    snapshot,
)
from tests.monitoring.known import RULES, metric_names_in
from tests.monitoring.test_dashboard import expressions

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
if not Path(PROMETHEUS).exists():
    pytest.skip(
        "prometheus not found: install Debian's prometheus package (hack/ci-packages.sh does)",
        allow_module_level=True,
    )

# What the chart's PodMonitor gives every data-plane target in a cluster.
TARGET_LABELS = {"namespace": "apps", "load_balancer": "chat", "pod": "chat-wslb-0"}


@dataclass
class Prometheus:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path

    def get(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}{query}", timeout=5) as r:
            return json.loads(r.read())

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        assert data["status"] == "success", data
        return list(data["data"]["result"])

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")


@pytest.fixture
def prometheus() -> Iterator[Callable[[int], Prometheus]]:
    started: list[Prometheus] = []

    def start(admin_port: int) -> Prometheus:
        workdir = Path(tempfile.mkdtemp(prefix="wslb-prometheus-"))
        shutil.copy(RULES, workdir / "rules.yaml")
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": ["rules.yaml"],
            "scrape_configs": [
                {
                    "job_name": "wslb-dataplane",
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{admin_port}"], "labels": TARGET_LABELS}
                    ],
                }
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        with (workdir / "prometheus.log").open("wb") as log:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--storage.tsdb.retention.time=1h",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                start_new_session=True,
            )
        started.append(Prometheus(proc, port, workdir))
        return started[-1]

    yield start
    for running in started:
        if running.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.proc.pid, signal.SIGTERM)
            try:
                running.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(running.proc.pid, signal.SIGKILL)
                running.proc.wait()
        shutil.rmtree(running.workdir, ignore_errors=True)


async def poll(check: Callable[[], Any], what: str, prom: Prometheus, timeout: float = 30) -> Any:
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
        await asyncio.sleep(0.25)


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
    config = snapshot(listener("ws", idleTimeoutSeconds=1, backends={"endpoints": [echo.endpoint]}))
    process = dataplane_process(config)
    await process.wait_ready()
    prom = prometheus(process.admin_port)
    await known_session(config["listeners"][0]["port"])

    def idle_close_scraped() -> bool:
        return bool(prom.query('wslb_dataplane_idle_timeouts_total{listener="ws"} == 1'))

    await poll(idle_close_scraped, "the idle close not scraped", prom)

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
        bad = snapshot(listener("ws", port=port, idleTimeoutSeconds=-attempt))
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
