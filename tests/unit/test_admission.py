"""dataplane.admission: each worker enforces its share of the listener's and the load
balancer's limits, and the shares add up to the setting."""

from __future__ import annotations

import pytest

from dataplane.admission import Capacity, Gate, share
from lbwire.snapshot import Listener, LoadBalancerLimits

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("total", "workers", "expected"),
    [
        (10, 1, [10]),
        (10, 4, [3, 3, 2, 2]),
        (5000, 3, [1667, 1667, 1666]),
        (2, 4, [1, 1, 1, 1]),  # each at least 1: one connection each beats refusing all
    ],
)
def test_shares_add_up_to_the_setting_each_at_least_one(
    total: int, workers: int, expected: list[int]
) -> None:
    assert [share(total, workers, index) for index in range(workers)] == expected


def gate(workers: int, index: int) -> Gate:
    config = Listener.model_validate(
        {
            "name": "ws",
            "port": 8080,
            "limits": {"maxConnections": 7, "newConnectionsPerSecond": 5},
        }
    )
    capacity = Capacity(LoadBalancerLimits(max_connections=9), workers, index)
    return Gate(config, capacity, None)


def test_each_worker_enforces_its_share_of_the_listener_limits() -> None:
    gates = [gate(3, index) for index in range(3)]
    assert [g.max_connections for g in gates] == [3, 2, 2]
    assert [g.rate for g in gates] == [2, 2, 1]
    assert [g.capacity.max_connections for g in gates] == [3, 3, 3]
    assert (gate(1, 0).max_connections, gate(1, 0).rate) == (7, 5)


def test_a_worker_refuses_past_its_share_not_past_the_whole_limit() -> None:
    second = gate(3, 1)  # max 2 connections on this listener in this worker
    second.capacity.active = 3
    assert second.check("192.0.2.1", 2, 0.0) is None
    refused = second.check("192.0.2.1", 3, 0.0)
    assert refused is not None and refused.label == "listener_connections"
