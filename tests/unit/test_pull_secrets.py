"""Reading and merging the chart's pull Secrets (no API server: a reader function)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping

from controller.pull_secrets import PullSecrets, merge, parse


def data(config: object) -> dict[str, str]:
    return {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()}


def test_merge_keeps_every_registry_and_the_first_entry_of_each() -> None:
    merged = json.loads(
        merge(
            [
                {"auths": {"a.example": {"auth": "first"}}},
                {"auths": {"a.example": {"auth": "second"}, "b.example": {"auth": "b"}}},
            ]
        )
    )
    assert merged == {"auths": {"a.example": {"auth": "first"}, "b.example": {"auth": "b"}}}


def test_parse_refuses_what_is_not_a_docker_config() -> None:
    assert parse({}) is None
    assert parse({".dockerconfigjson": "not base64!"}) is None
    assert parse({".dockerconfigjson": base64.b64encode(b"[1]").decode()}) is None
    assert parse(data({"auths": {}})) == {"auths": {}}


async def test_refresh_reads_by_name_and_reports_a_change() -> None:
    store: dict[tuple[str, str], Mapping[str, str]] = {
        ("sys", "one"): data({"auths": {"a.example": {"auth": "x"}}}),
        ("sys", "bad"): {"other": "eA=="},
    }
    calls: list[tuple[str, str]] = []

    async def read(namespace: str, name: str) -> Mapping[str, str] | None:
        calls.append((namespace, name))
        return store.get((namespace, name))

    now = [0.0]
    pull = PullSecrets(("one", "bad", "gone"), "sys", refresh_seconds=60, clock=lambda: now[0])
    assert pull.enabled and pull.stale()
    assert await pull.refresh(read) is True
    assert calls == [("sys", "one"), ("sys", "bad"), ("sys", "gone")]
    assert json.loads(pull.config) == {"auths": {"a.example": {"auth": "x"}}}
    assert not pull.stale()
    assert await pull.refresh(read) is False  # same content
    now[0] = 60
    assert pull.stale()
    store[("sys", "gone")] = data({"auths": {"g.example": {"auth": "g"}}})
    assert await pull.refresh(read) is True
    assert sorted(json.loads(pull.config)["auths"]) == ["a.example", "g.example"]


async def test_a_read_failure_leaves_that_secret_out() -> None:
    async def read(namespace: str, name: str) -> Mapping[str, str] | None:
        if name == "denied":
            raise PermissionError("forbidden")
        return data({"auths": {"ok.example": {}}})

    pull = PullSecrets(("denied", "fine"), "sys")
    await pull.refresh(read)
    assert json.loads(pull.config) == {"auths": {"ok.example": {}}}


def test_no_names_means_disabled() -> None:
    assert not PullSecrets((), "sys").enabled
