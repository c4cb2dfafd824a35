"""`helm template` of the real chart (helm/wslb), parsed into documents."""

from __future__ import annotations

import subprocess
from typing import Any

import yaml

from tests.monitoring.known import ROOT
from tests.unit.test_chart_crds import HELM

CHART = ROOT / "helm/wslb"


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def render(*args: str) -> list[dict[str, Any]]:
    out = helm("template", "wslb", str(CHART), "-n", "wslb-system", *args).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]
