"""dataplane.group: a backend group's timers, endpoint states across swaps, and its pool."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dataplane.balancer import EndpointState, RequestInfo
from dataplane.group import BackendGroup, relay_settings
from lbwire.snapshot import Listener, Rule

pytestmark = pytest.mark.unit


def config(endpoints: list[int], **fields: Any) -> Listener:
    return Listener.model_validate(
        {
            "name": "web",
            "port": 8080,
            "backends": {"endpoints": [{"address": "10.0.0.1", "port": p} for p in endpoints]},
            **fields,
        }
    )


class Conn:
    def __init__(self) -> None:
        self.closed = False

    def abandon(self) -> None:
        self.closed = True


def test_a_rule_timer_overrides_the_listener_and_an_unset_one_falls_back() -> None:
    listener = config([1], idleTimeoutSeconds=60, keepalive={"intervalSeconds": 20})
    rule = Rule.model_validate({"name": "ws", "idleTimeoutSeconds": 3600})
    settings = relay_settings(listener, rule)
    assert settings.idle_timeout == 3600
    assert settings.keepalive_interval == 20  # the listener's: the rule sets none
    assert relay_settings(listener, None).idle_timeout == 60


async def test_endpoint_states_survive_a_swap_and_removed_ones_are_reported() -> None:
    group = BackendGroup("default", "web", lambda group, state: None)
    group.apply(config([1, 2]), None)
    kept = group.endpoints["10.0.0.1:1"]
    kept.active = 3
    removed = group.apply(config([1]), None)
    assert group.endpoints["10.0.0.1:1"] is kept and kept.active == 3
    assert [state.key for state in removed] == ["10.0.0.1:2"]
    await group.close()


async def test_sticky_endpoint_wins_while_eligible() -> None:
    group = BackendGroup("default", "web", lambda group, state: None)
    group.apply(config([1, 2]), None)
    info = RequestInfo("192.0.2.1", "/")
    assert group.choose(info, [], "10.0.0.1:2") is group.endpoints["10.0.0.1:2"]
    assert group.choose(info, ["10.0.0.1:2"], "10.0.0.1:2") is group.endpoints["10.0.0.1:1"]
    await group.close()


async def test_pool_keeps_connections_of_live_endpoints_only() -> None:
    group = BackendGroup("default", "web", lambda group, state: None)
    group.apply(config([1, 2]), None)
    one, two = group.endpoints["10.0.0.1:1"], group.endpoints["10.0.0.1:2"]
    first, second = Conn(), Conn()
    assert group.put_idle(one, first, None)
    assert group.put_idle(two, second, None)
    assert len(group.pool) == 2
    group.apply(config([1]), None)  # endpoint 2 leaves: its idle connection closes
    assert second.closed and not first.closed
    assert group.put_idle(two, Conn(), None) is False  # a departed endpoint is never pooled
    assert group.take_idle(one, asyncio.get_running_loop().time()) is first
    await group.close()
    assert len(group.pool) == 0


async def test_a_draining_endpoint_is_not_pooled_and_close_empties_the_pool() -> None:
    group = BackendGroup("default", "web", lambda group, state: None)
    listener = config([1])
    group.apply(listener, None)
    state: EndpointState = group.endpoints["10.0.0.1:1"]
    state.draining = True
    conn = Conn()
    assert group.put_idle(state, conn, None) is False
    assert conn.closed
    state.draining = False
    kept = Conn()
    assert group.put_idle(state, kept, None)
    await group.close()
    assert kept.closed
