"""The controller's /metrics: build info, nack counters that exist before the first nack,
OpenMetrics on request, and the health server choosing the format from the Accept header."""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import uvloop
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families as parse_text

from controller.main import HealthServer
from controller.metrics import NACK_REASONS, ControllerMetrics
from lbwire.build import build_labels

ROOT = Path(__file__).resolve().parents[2]
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"  # then parameters


def test_build_labels_name_the_installed_versions() -> None:
    labels = build_labels()
    assert labels["uvloop"] == uvloop.__version__
    assert labels["openssl"] in ssl.OPENSSL_VERSION
    assert labels["python"].count(".") == 2
    assert labels["version"] != "unknown"  # wslb is installed (make venv)


def test_controller_exposes_build_info_with_the_shared_labels() -> None:
    metrics = ControllerMetrics()
    value = metrics.registry.get_sample_value("wslb_build_info", build_labels())
    assert value == 1


def test_nack_counters_exist_at_zero_once_a_data_plane_connects() -> None:
    """A counter born at 1 has no sample for increase() to start from: the alert would miss
    the first nack. They exist at 0 from the first connection on."""
    metrics = ControllerMetrics()
    registry = metrics.registry
    assert (
        registry.get_sample_value(
            "wslb_controller_nacks_total",
            {"namespace": "apps", "load_balancer": "chat", "reason": "InvalidConfig"},
        )
        is None
    )
    metrics.connected("apps/chat", 1)
    for reason in NACK_REASONS:
        labels = {"namespace": "apps", "load_balancer": "chat", "reason": reason}
        assert registry.get_sample_value("wslb_controller_nacks_total", labels) == 0
    metrics.nacked("apps/chat", "InvalidConfig")
    labels = {"namespace": "apps", "load_balancer": "chat", "reason": "InvalidConfig"}
    assert registry.get_sample_value("wslb_controller_nacks_total", labels) == 1


def test_known_nack_reasons_are_those_the_data_plane_sends() -> None:
    source = (ROOT / "dataplane/config_client.py").read_text()
    sent = set(re.findall(r'_nack\(\s*message,\s*"([A-Za-z]+)"', source))
    assert sent, "no nack reason found in dataplane/config_client.py"
    assert sent <= set(NACK_REASONS)


def test_render_speaks_openmetrics_only_when_asked() -> None:
    metrics = ControllerMetrics()
    metrics.acked("apps/chat", 0.2)
    text, text_type = metrics.render("")
    assert text_type.startswith("text/plain")
    assert not text.endswith(b"# EOF\n")
    assert {f.name for f in parse_text(text.decode())} >= {"wslb_controller_acks"}
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0,*/*;q=0.1")
    assert content_type.startswith(OPENMETRICS)
    assert body.endswith(b"# EOF\n")
    families = {f.name: f for f in parse_om(body.decode())}
    assert families["wslb_build_info"].samples[0].value == 1
    assert families["wslb_controller_acks"].type == "counter"


async def fetch(port: int, accept: str | None) -> tuple[str, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = f"Accept: {accept}\r\n" if accept is not None else ""
    writer.write(f"GET /metrics HTTP/1.1\r\nHost: x\r\n{header}\r\n".encode())
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.decode().partition("\r\n\r\n")
    (content_type,) = [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("content-type:")
    ]
    return content_type, body


async def test_health_server_answers_openmetrics_to_a_scraper_that_asks() -> None:
    health = HealthServer(ControllerMetrics(), lambda: True)
    port = await health.start("127.0.0.1", 0)
    try:
        plain_type, plain = await fetch(port, None)
        om_type, om = await fetch(port, "application/openmetrics-text;version=1.0.0")
    finally:
        await health.close()
    assert plain_type.startswith("text/plain; version=0.0.4")
    assert "wslb_build_info{" in plain and "# EOF" not in plain
    assert om_type.startswith(OPENMETRICS)
    assert om.endswith("# EOF\n")


def test_a_forgotten_load_balancer_leaves_no_series() -> None:
    metrics = ControllerMetrics()
    for lb in ("apps/chat", "apps/news"):
        metrics.connected(lb, 1)
        metrics.pushed(lb)
        metrics.acked(lb, 0.1)
        metrics.nacked(lb, "SomethingNew")
        metrics.propagated(lb, 0.5)
    metrics.forgotten("apps/chat")
    left = {
        (sample.labels.get("namespace"), sample.labels.get("load_balancer"))
        for family in metrics.registry.collect()
        for sample in family.samples
    }
    assert ("apps", "chat") not in left
    assert ("apps", "news") in left
    news = {"namespace": "apps", "load_balancer": "news", "reason": "SomethingNew"}
    assert metrics.registry.get_sample_value("wslb_controller_nacks_total", news) == 1
