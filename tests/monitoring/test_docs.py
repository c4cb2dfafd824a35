"""docs/observability.md names every metric wslb exposes, read from the real registries, so
a metric added to the code without a line in the docs fails here."""

from __future__ import annotations

import pytest

from tests.monitoring.known import DOC, registries

pytestmark = pytest.mark.unit

# Documented by one wildcard row each (`process_*`, `python_gc_*`): the client library's own.
WILDCARD_PREFIXES = ("process_", "python_")


def test_every_exposed_metric_is_in_the_metrics_tables() -> None:
    doc = DOC.read_text()
    names = set()
    for registry in registries():
        for family in registry.collect():
            suffix = "_total" if family.type == "counter" else ""
            names.add(family.name + suffix)
    assert "wslb_dataplane_http_requests_total" in names  # the registries are the real ones
    wslb = {name for name in names if not name.startswith(WILDCARD_PREFIXES)}
    assert {name for name in wslb if f"| `{name}`" not in doc and f", `{name}`" not in doc} == set()
