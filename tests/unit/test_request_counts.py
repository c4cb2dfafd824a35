"""The HTTP request counter and duration histogram: integers on the request path, turned
into Prometheus series at scrape time (metrics.RequestCounts, RequestCollector)."""

from __future__ import annotations

import pytest

from dataplane.metrics import REQUEST_BUCKETS, Metrics

pytestmark = pytest.mark.unit


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_requests_are_counted_by_rule_method_class_and_status_class() -> None:
    metrics = Metrics()
    counts = metrics.requests_of("web")
    counts.add("default", b"GET", 200, 0.002)
    counts.add("default", b"GET", 204, 0.002)
    counts.add("default", b"PROPFIND", 404, 0.002)  # an uncommon method: `other`
    counts.add("default", b"MKCOL", 404, 0.002)
    counts.add("api", b"POST", 502, 0.002)
    requests = "wslb_dataplane_http_requests_total"
    web = {"listener": "web", "rule": "default"}
    assert sample(metrics, requests, **web, method="GET", code="2xx") == 2
    assert sample(metrics, requests, **web, method="other", code="4xx") == 2
    assert sample(metrics, requests, listener="web", rule="api", method="POST", code="5xx") == 1
    assert sample(metrics, requests, **web, method="POST", code="5xx") is None


def test_the_duration_histogram_is_cumulative_and_a_bound_counts_in_its_own_bucket() -> None:
    metrics = Metrics()
    counts = metrics.requests_of("web")
    for duration in (0.0005, REQUEST_BUCKETS[0], 0.003, REQUEST_BUCKETS[-1] + 1):
        counts.add("default", b"GET", 200, duration)
    seconds = "wslb_dataplane_http_request_duration_seconds"
    web = {"listener": "web", "rule": "default"}
    assert sample(metrics, f"{seconds}_bucket", **web, le=str(REQUEST_BUCKETS[0])) == 2
    assert sample(metrics, f"{seconds}_bucket", **web, le="0.005") == 3
    assert sample(metrics, f"{seconds}_bucket", **web, le=str(float(REQUEST_BUCKETS[-1]))) == 3
    assert sample(metrics, f"{seconds}_bucket", **web, le="+Inf") == 4
    assert sample(metrics, f"{seconds}_count", **web) == 4
    total = 0.0005 + REQUEST_BUCKETS[0] + 0.003 + REQUEST_BUCKETS[-1] + 1
    assert sample(metrics, f"{seconds}_sum", **web) == pytest.approx(total)


def test_a_forgotten_listener_loses_its_request_series() -> None:
    metrics = Metrics()
    metrics.requests_of("web").add("default", b"GET", 200, 0.01)
    metrics.requests_of("other").add("default", b"GET", 200, 0.01)
    metrics.forget_listener("web")
    requests = "wslb_dataplane_http_requests_total"
    labels = {"rule": "default", "method": "GET", "code": "2xx"}
    assert sample(metrics, requests, listener="web", **labels) is None
    assert sample(metrics, requests, listener="other", **labels) == 1
    assert metrics.requests_of("web").requests == {}  # a listener added again starts at 0
