"""The snapshot's `http` block: the bounds of its settings and the errors that name them."""

from __future__ import annotations

from typing import Any

import pytest

from lbwire.errors import ConfigError
from lbwire.snapshot import Http, parse_snapshot


def with_http(http: dict[str, Any]) -> dict[str, Any]:
    listener = {"name": "web", "port": 8080, "http": http}
    return {"version": "1", "loadBalancer": {"name": "lb"}, "listeners": [listener]}


def test_request_body_timeout_defaults_to_nginx_client_body_timeout() -> None:
    assert Http().request_body_timeout_seconds == 60
    parsed = parse_snapshot(with_http({}))
    assert parsed.listeners[0].http.request_body_timeout_seconds == 60


@pytest.mark.parametrize("seconds", [0.05, 1, 3600])
def test_request_body_timeout_within_its_bounds_is_kept(seconds: float) -> None:
    parsed = parse_snapshot(with_http({"requestBodyTimeoutSeconds": seconds}))
    assert parsed.listeners[0].http.request_body_timeout_seconds == seconds


@pytest.mark.parametrize(
    ("seconds", "message"),
    [
        (0, "greater than 0"),
        (-1, "greater than 0"),
        (3601, "less than or equal to 3600"),
        ("soon", "valid number"),
    ],
)
def test_request_body_timeout_out_of_bounds_is_refused_by_name(seconds: Any, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_snapshot(with_http({"requestBodyTimeoutSeconds": seconds}), source="lb.yaml")
    assert refused.value.fields == ["listeners[0].http.requestBodyTimeoutSeconds"]
    assert message in str(refused.value)
    assert "lb.yaml" in str(refused.value)


def test_request_body_timeout_round_trips_on_the_wire() -> None:
    parsed = parse_snapshot(with_http({"requestBodyTimeoutSeconds": 7}))
    wire = parsed.to_wire()["listeners"][0]["http"]
    assert wire["requestBodyTimeoutSeconds"] == 7.0
    assert parse_snapshot(parsed.to_wire()) == parsed
