"""A temporary copy of the chart with monitoring/chart-values.yaml and its schema merged in,
as the lead will merge them into helm/wslb/values.yaml and values.schema.json."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.known import ROOT
from tests.unit.test_chart_crds import HELM

CHART = ROOT / "helm/wslb"
VALUES = ROOT / "monitoring/chart-values.yaml"
SCHEMA = ROOT / "monitoring/chart-values.schema.json"


def deep_merge(base: Any, extra: Any) -> Any:
    if isinstance(base, dict) and isinstance(extra, dict):
        merged = dict(base)
        for key, value in extra.items():
            merged[key] = deep_merge(base[key], value) if key in base else value
        return merged
    return extra


def merged_chart(directory: Path) -> Path:
    chart = directory / "wslb"
    shutil.copytree(CHART, chart)
    values = deep_merge(
        yaml.safe_load((CHART / "values.yaml").read_text()), yaml.safe_load(VALUES.read_text())
    )
    (chart / "values.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    schema = json.loads((CHART / "values.schema.json").read_text())
    extra = json.loads(SCHEMA.read_text())
    extra.pop("$comment", None)
    (chart / "values.schema.json").write_text(json.dumps(deep_merge(schema, extra), indent=2))
    return chart


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def render(chart: Path, *args: str) -> list[dict[str, Any]]:
    out = helm("template", "wslb", str(chart), "-n", "wslb-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
