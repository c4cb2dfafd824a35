"""The `helm test` pods' scripts, run for real on loopback: the controller probe against the
controller's own health server, the upgrade probe through a running data plane to an echo
backend. Only the URL each pod is rendered with is swapped for the loopback one."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from controller.main import HealthServer
from controller.metrics import ControllerMetrics
from tests.integration.conftest import Backend, DataplaneProcess, listener, snapshot
from tests.monitoring.chart import merged_chart, render
from tests.unit.test_chart_crds import needs_helm

pytestmark = [pytest.mark.integration, needs_helm]


def scripts() -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory(prefix="wslb-chart-") as tmp:
        chart = merged_chart(Path(tmp))
        pods = render(chart, "--set", "tests.loadBalancer.name=chat")
    return {
        pod["metadata"]["name"]: pod["spec"]["containers"][0]["command"]
        for pod in pods
        if pod["kind"] == "Pod"
    }


async def run(command: list[str], url: str) -> tuple[int, str]:
    assert command[:2] == ["python", "-c"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        command[2],
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_controller_probe_passes_against_a_ready_controller() -> None:
    command = scripts()["wslb-test-controller"]
    health = HealthServer(ControllerMetrics(), lambda: True)
    port = await health.start("127.0.0.1", 0)
    try:
        code, out = await run(command, f"http://127.0.0.1:{port}/readyz")
    finally:
        await health.close()
    assert code == 0, out
    assert "200 ready" in out


async def test_upgrade_probe_opens_a_websocket_through_the_data_plane(
    backends: Callable[..., Awaitable[list[Backend]]],
    dataplane_process: Callable[..., DataplaneProcess],
) -> None:
    command = scripts()["wslb-test-dataplane"]
    (echo,) = await backends(1)
    config = snapshot(listener("ws", backends={"endpoints": [echo.endpoint]}))
    process = dataplane_process(config)
    await process.wait_ready()
    port = config["listeners"][0]["port"]
    code, out = await run(command, f"ws://127.0.0.1:{port}/")
    assert code == 0, out
    assert "upgraded: 101" in out
    status, metrics = await process.admin("/metrics")
    assert status == 200
    assert 'wslb_dataplane_upgrades_total{code="101",listener="ws"} 1.0' in metrics
