"""The PrometheusRule's alerts: promtool's unit tests pass, every alert is tested firing,
carries summary, description and a runbook section that exists, and queries real metrics."""

from __future__ import annotations

import re
import subprocess
from typing import Any

import pytest
import yaml

from tests.monitoring.known import (
    ASSUMED,
    DOC,
    RULE_TESTS,
    RULES,
    exposed_metric_names,
    metric_names_in,
    promtool,
)

pytestmark = pytest.mark.unit


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_rules_file() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", str(RULE_TESTS)],
        capture_output=True,
        text=True,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_firing() -> None:
    fired: set[str] = set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            if check.get("exp_alerts"):
                fired.add(check["alertname"])
    assert {rule["alert"] for rule in alerts()} - fired == set()


def test_every_alert_has_severity_summary_description_and_a_runbook_section() -> None:
    doc = DOC.read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
        for line in doc.splitlines()
        if line.startswith("#")
    }
    names = [rule["alert"] for rule in alerts()]
    assert len(names) == len(set(names))
    for rule in alerts():
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        page, _, anchor = notes["runbook_url"].partition("#")
        assert page == "docs/observability.md", rule["alert"]
        assert anchor == rule["alert"].lower(), rule["alert"]
        assert anchor in anchors, f"docs/observability.md has no section {rule['alert']}"


def test_alerts_query_only_metrics_that_exist_or_are_listed_as_assumed() -> None:
    exposed = exposed_metric_names()
    used: set[str] = set()
    for rule in alerts():
        used |= metric_names_in(rule["expr"])
    assert used - exposed - ASSUMED == set()
    assert used >= ASSUMED  # nothing stale in the assumed list
