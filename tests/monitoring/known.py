"""What the monitoring tests check queries against: the metric names wslb exposes today,
read from the real registries (not a hand-kept list), and a PromQL parse through promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from controller.metrics import ControllerMetrics
from dataplane.access_log import AccessLog, AccessLogCollector
from dataplane.metrics import Metrics, TrafficTotals
from dataplane.process_metrics import Observability
from lbwire.snapshot import Listener, Snapshot

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm/wslb/files/prometheus-rules.yaml"
RULE_TESTS = ROOT / "monitoring/alerts.test.yaml"
DASHBOARD = ROOT / "helm/wslb/files/dashboards/wslb.json"
DOC = ROOT / "docs/observability.md"

# Series Prometheus itself adds to every target.
SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
# Metrics the rules or dashboard use that wslb does not expose yet (each named in the report
# and in docs/observability.md): alerts on them stay silent until they exist.
ASSUMED: set[str] = set()

METRIC = re.compile(r"\b((?:wslb|process|python)_[a-z0-9_]+|up)\b(?!\s*\()")


def _names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        suffixes = {
            "counter": ["_total"],
            "histogram": ["_bucket", "_sum", "_count"],
            "summary": ["_sum", "_count"],
            "info": ["_info"],
        }.get(family.type, [])
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


def registries() -> list[CollectorRegistry]:
    """The data plane's registry (with every collector Runtime adds) and the controller's."""
    dataplane = Metrics()
    dataplane.watch_traffic(lambda: [("ws", TrafficTotals())])  # as Runtime registers it
    listener = Listener.model_validate({"name": "ws", "port": 8080})
    snap = Snapshot(listeners=[listener])
    made = Observability.install(dataplane.registry, lambda: snap, controller_mode=True)
    made.channel.acked()
    made.channel.nacked()
    dataplane.registry.register(AccessLogCollector(AccessLog()))
    return [dataplane.registry, ControllerMetrics().registry]


def exposed_metric_names() -> set[str]:
    """Every family of the data plane (with the new collectors) and of the controller."""
    names = set(SCRAPE_SERIES)
    for registry in registries():
        names |= _names(registry)
    return names


def metric_names_in(expr: str) -> set[str]:
    without_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    without_grouping = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_strings)
    return set(METRIC.findall(without_grouping))


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install prometheus; hack/ci-packages.sh does)"
        )
    return path


def check_promql(exprs: dict[str, str]) -> None:
    """Parse every expression with Prometheus's own parser (as recording rules)."""
    rules = {
        "groups": [
            {
                "name": "parse",
                "rules": [
                    {"record": f"parse:{index}", "expr": expr}
                    for index, expr in enumerate(exprs.values())
                ],
            }
        ]
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as handle:
        yaml.safe_dump(rules, handle)
        handle.flush()
        result = subprocess.run(
            [promtool(), "check", "rules", handle.name], capture_output=True, text=True
        )
    assert result.returncode == 0, result.stdout + result.stderr
