"""The sticky cookie through the real proxy names no backend address, and keeps routing
to its backend across snapshots that add, reorder and remove endpoints."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from websockets.asyncio.client import connect

from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import free_port, listener, snapshot

pytestmark = pytest.mark.integration

SECRET = "integration-test-opaque-sticky-secret"


def sticky(endpoints: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "scheduler": "rr",
        "sticky": {"mode": "insert", "secret": SECRET},
        "endpoints": endpoints,
    }


async def visit(uri: str, cookie: str | None = None) -> tuple[str, str | None]:
    """(backend name, the `name=value` pair the 101 set, if any)."""
    headers = {"Cookie": cookie} if cookie else None
    async with connect(uri, additional_headers=headers) as ws:
        assert ws.response is not None
        set_cookie = ws.response.headers.get("Set-Cookie")
        await ws.send("whoami")
        served = str(await ws.recv())
    return served, set_cookie.split(";", 1)[0] if set_cookie else None


async def cookies_by_backend(uri: str, wanted: int) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for _ in range(10):
        served, pair = await visit(uri)
        assert pair is not None and pair.startswith("WSLB_STICKY=")
        cookies.setdefault(served, pair)
        if len(cookies) == wanted:
            return cookies
    raise AssertionError(f"saw only {sorted(cookies)} in 10 connections")


def readable_forms(value: str) -> list[bytes]:
    """The value and every part of it decoded as base64url, as someone curious would."""
    forms = [value.encode()]
    for part in value.replace("~", ".").split("."):
        try:
            forms.append(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        except ValueError:
            continue
    return forms


async def test_the_cookie_names_no_backend_address(backends: Any, dataplane: Any) -> None:
    backend_list = await backends(2)
    runtime = await dataplane(
        snapshot(listener(backends=sticky([b.endpoint for b in backend_list])))
    )
    uri = f"ws://127.0.0.1:{runtime.listeners['ws'].config.port}/"
    cookies = await cookies_by_backend(uri, 2)
    for backend in backend_list:
        value = cookies[backend.name].split("=", 1)[1]
        for form in readable_forms(value):
            assert b"127.0.0.1" not in form, value
            assert str(backend.port).encode() not in form, value


async def test_the_cookie_follows_its_backend_across_endpoint_changes(
    backends: Any, dataplane: Any
) -> None:
    one, two, three = await backends(3)
    port = free_port()

    def config(version: str, *members: Any) -> Any:
        endpoints = [member.endpoint for member in members]
        return parse_snapshot(
            snapshot(listener(port=port, backends=sticky(endpoints)), version=version)
        )

    runtime = await dataplane(
        snapshot(listener(port=port, backends=sticky([one.endpoint, two.endpoint])))
    )
    uri = f"ws://127.0.0.1:{port}/"
    cookies = await cookies_by_backend(uri, 2)

    await runtime.apply(config("2", three, two, one))
    for backend in (one, two):
        served = [(await visit(uri, cookies[backend.name]))[0] for _ in range(3)]
        assert served == [backend.name] * 3

    await runtime.apply(config("3", three, two))
    served, reissued = await visit(uri, cookies[one.name])
    assert served in (two.name, three.name), "an endpoint that left resolves nowhere"
    assert reissued is not None and reissued != cookies[one.name]
    assert [(await visit(uri, reissued))[0] for _ in range(3)] == [served] * 3
