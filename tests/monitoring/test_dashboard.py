"""The Grafana dashboard: generated from monitoring/dashboard.py (not hand-edited), every panel
query parses as PromQL and reads metrics wslb exposes, and the issue's panels are there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.monitoring.known import (
    ASSUMED,
    DASHBOARD,
    check_promql,
    exposed_metric_names,
    metric_names_in,
)

pytestmark = pytest.mark.unit

# Grafana's variables, replaced by what they expand to before Prometheus parses a query.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$namespace": ".*",
    "$load_balancer": ".*",
    "$listener": ".*",
}


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def expressions() -> dict[str, str]:
    out = {}
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            out[f"{panel['title']}/{target['refId']}"] = expr
    return out


def test_committed_json_is_what_the_code_builds(tmp_path: Path) -> None:
    pytest.importorskip(
        "grafana_foundation_sdk",
        reason="grafana-foundation-sdk is a dev dependency (pyproject.toml [dev]): make venv",
    )
    from monitoring import dashboard

    assert dashboard.main(["--check"]) == 0
    stale = tmp_path / "wslb.json"
    stale.write_text(DASHBOARD.read_text().replace('"wslb"', '"edited by hand"', 1))
    assert dashboard.main(["--check", "--output", str(stale)]) == 1


def test_every_panel_query_parses_as_promql() -> None:
    exprs = expressions()
    assert len(exprs) >= 30
    assert all("$" not in expr for expr in exprs.values()), "a Grafana variable left unexpanded"
    check_promql(exprs)


def test_panel_queries_read_only_exposed_metrics() -> None:
    exposed = exposed_metric_names()
    used: set[str] = set()
    for expr in expressions().values():
        names = metric_names_in(expr)
        assert names, expr
        used |= names
    assert used - exposed - ASSUMED == set()


def test_the_issue_panels_are_on_the_dashboard() -> None:
    titles = {panel["title"] for panel in panels()}
    assert {
        "Active connections",
        "Upgrades /s by result",
        "Closes /s by code and initiator",
        "Idle and keepalive timeouts /s",
        "Handshake latency",
        "Messages /s",
        "Bytes /s",
        "Healthy backends",
        "Limits in use",
        "Applied config version per pod",
        "Config reloads, nacks and channel",
        "Resident memory per pod and worker",
        "Open file descriptors",
    } <= titles


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    taken: set[tuple[int, int]] = set()
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        pos = panel["gridPos"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & taken, panel["title"]
        assert pos["x"] + pos["w"] <= 24
        taken |= cells
