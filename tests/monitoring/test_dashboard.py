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
    "$rule": ".*",
}


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def expressions() -> dict[str, str]:
    """Every panel query by "title/refId"; a title used twice (a stat and a graph) gets the
    panel type added, so no query hides another."""
    out = {}
    for panel in panels():
        for target in panel["targets"]:
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            key = f"{panel['title']}/{target['refId']}"
            if key in out:
                key = f"{panel['title']} ({panel['type']})/{target['refId']}"
            assert key not in out, key
            out[key] = expr
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
    assert len(exprs) == sum(len(panel["targets"]) for panel in panels()) >= 30
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
        "HTTP requests /s by listener and rule",
        "HTTP requests /s by status class and method",
        "HTTP 5xx ratio",
        "HTTP request latency",
        "HTTP backend errors /s by kind",
        "Idle pooled backend connections",
        "HTTP requests /s",
        "HTTP 5xx ratio (selected listeners)",
    } <= titles


def test_http_row_reads_the_http_metrics_with_the_rule_variable() -> None:
    """The HTTP row: latency from the request histogram at p50/p95/p99, every request
    panel filtered by the Rule variable, and the variable itself listed from the requests."""
    dashboard = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert "HTTP" in rows
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert "wslb_dataplane_http_requests_total" in str(variables["rule"]["query"])
    by_title = {p["title"]: p for p in panels()}
    latency = [t["expr"] for t in by_title["HTTP request latency"]["targets"]]
    assert [e.split(",")[0] for e in latency] == [
        "histogram_quantile(0.50",
        "histogram_quantile(0.95",
        "histogram_quantile(0.99",
    ]
    assert all("wslb_dataplane_http_request_duration_seconds_bucket" in e for e in latency)
    for title in ("HTTP requests /s by listener and rule", "HTTP 5xx ratio"):
        for target in by_title[title]["targets"]:
            assert 'rule=~"$rule"' in target["expr"], title


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
