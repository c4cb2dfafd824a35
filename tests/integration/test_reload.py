"""Config swaps: atomic, never cutting live connections unless their backend or listener
left, and then draining them with 1001."""

from __future__ import annotations

import asyncio
import copy
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from dataplane.certs import self_signed
from lbwire.errors import ConfigError
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import free_port, listener, snapshot, url, wait_until


async def _chatter(ws: ClientConnection, rounds: int, pause: float) -> int:
    done = 0
    for i in range(rounds):
        await ws.send(f"m{i}")
        assert await ws.recv() == f"m{i}"
        done += 1
        await asyncio.sleep(pause)
    return done


async def test_reloads_with_200_live_connections_drop_none(backends: Any, dataplane: Any) -> None:
    first, second = await backends(2)
    config = snapshot(listener(backends={"endpoints": [first.endpoint, second.endpoint]}))
    runtime = await dataplane(config)
    clients = [await connect(url(runtime), ping_interval=None) for _ in range(200)]
    chatter = [asyncio.create_task(_chatter(ws, 20, 0.05)) for ws in clients]
    for version in range(2, 8):
        changed = copy.deepcopy(config)
        changed["version"] = str(version)
        lst = changed["listeners"][0]
        lst["idleTimeoutSeconds"] = 60 + version
        lst["backends"]["scheduler"] = ["wlc", "rr", "wrr"][version % 3]
        lst["backends"]["endpoints"][0]["weight"] = 10 * version
        await runtime.apply(parse_snapshot(changed))
        await asyncio.sleep(0.1)
    results = await asyncio.gather(*chatter)
    assert results == [20] * 200
    assert all(ws.close_code is None for ws in clients)
    for ws in clients:
        await ws.close()
    assert runtime.snapshot is not None
    assert runtime.snapshot.version == "7"


async def test_removed_endpoint_connections_drain_then_close_1001(
    backends: Any, dataplane: Any
) -> None:
    first, second = await backends(2)
    config = snapshot(
        listener(
            drainTimeoutSeconds=1,
            backends={"scheduler": "rr", "endpoints": [first.endpoint, second.endpoint]},
        )
    )
    runtime = await dataplane(config)
    clients = [await connect(url(runtime), ping_interval=None) for _ in range(4)]
    names = []
    for ws in clients:
        await ws.send("whoami")
        names.append(await ws.recv())
    assert sorted(names) == [first.name, first.name, second.name, second.name]
    removed = copy.deepcopy(config)
    removed["version"] = "2"
    removed["listeners"][0]["backends"]["endpoints"] = [second.endpoint]
    await runtime.apply(parse_snapshot(removed))
    # Draining connections keep working until the drain timeout ...
    for ws in clients:
        await ws.send("still")
        assert await ws.recv() == "still"
    # ... then those on the removed endpoint get 1001, the others stay.
    doomed = [ws for ws, name in zip(clients, names, strict=True) if name == first.name]
    kept = [ws for ws, name in zip(clients, names, strict=True) if name == second.name]
    for ws in doomed:
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001
    for ws in kept:
        await ws.send("alive")
        assert await ws.recv() == "alive"
    async with connect(url(runtime), ping_interval=None) as fresh:
        await fresh.send("whoami")
        assert await fresh.recv() == second.name
    for ws in kept:
        await ws.close()


async def test_terminating_endpoint_marked_draining_drains(backends: Any, dataplane: Any) -> None:
    (only,) = await backends(1)
    config = snapshot(listener(drainTimeoutSeconds=0.5, backends={"endpoints": [only.endpoint]}))
    runtime = await dataplane(config)
    ws = await connect(url(runtime), ping_interval=None)
    draining = copy.deepcopy(config)
    draining["version"] = "2"
    draining["listeners"][0]["backends"]["endpoints"][0]["draining"] = True
    await runtime.apply(parse_snapshot(draining))
    await asyncio.wait_for(ws.wait_closed(), 5)
    assert ws.close_code == 1001


async def test_unusable_certificate_is_refused_and_old_config_keeps_serving(
    backends: Any, dataplane: Any, tls: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    runtime = await dataplane(config)
    ws = await connect(url(runtime), ping_interval=None)
    broken = copy.deepcopy(config)
    broken["version"] = "2"
    _, other_key = self_signed(["other"])
    broken["listeners"].append(
        listener(
            "wss",
            protocol="HTTPS",
            tls={"certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": other_key}]},
            backends={"endpoints": [backend.endpoint]},
        )
    )
    with pytest.raises(ConfigError) as caught:
        await runtime.apply(parse_snapshot(broken))
    assert caught.value.fields == ["listeners[1].tls"]
    assert runtime.snapshot is not None and runtime.snapshot.version == "1"
    assert set(runtime.listeners) == {"ws"}
    await ws.send("ok")
    assert await ws.recv() == "ok"
    await ws.close()


async def test_port_in_use_is_refused_naming_the_field(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    runtime = await dataplane(config)
    clash = copy.deepcopy(config)
    clash["version"] = "2"
    clash["listeners"].append(listener("other", port=backend.port))
    with pytest.raises(ConfigError) as caught:
        await runtime.apply(parse_snapshot(clash))
    assert caught.value.fields == ["listeners[1].port"]
    assert set(runtime.listeners) == {"ws"}


async def test_adding_and_removing_a_listener_touches_only_that_port(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    config = snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    runtime = await dataplane(config)
    ws = await connect(url(runtime), ping_interval=None)
    added = copy.deepcopy(config)
    added["version"] = "2"
    extra_port = free_port()
    added["listeners"].append(
        listener(
            "extra",
            port=extra_port,
            drainTimeoutSeconds=0,
            backends={"endpoints": [backend.endpoint]},
        )
    )
    await runtime.apply(parse_snapshot(added))
    async with connect(url(runtime, "extra"), ping_interval=None) as other:
        await other.send("x")
        assert await other.recv() == "x"
    removed = copy.deepcopy(config)
    removed["version"] = "3"
    await runtime.apply(parse_snapshot(removed))
    await wait_until(lambda: not runtime.retired, timeout=10)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", extra_port)
    await ws.send("untouched")
    assert await ws.recv() == "untouched"
    await ws.close()


async def test_rotated_certificate_serves_new_connections_and_keeps_old_ones(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    old_cert, old_key = self_signed(["127.0.0.1"])
    new_cert, new_key = self_signed(["127.0.0.1"])

    def config(version: str, cert: str, key: str) -> dict[str, Any]:
        return snapshot(
            listener(
                "wss",
                port=port,
                protocol="HTTPS",
                tls={"certificates": [{"certificatePem": cert, "privateKeyPem": key}]},
                backends={"endpoints": [backend.endpoint]},
            ),
            version=version,
        )

    port = free_port()
    runtime = await dataplane(config("1", old_cert, old_key))
    old_ctx = ssl.create_default_context(cadata=old_cert)
    new_ctx = ssl.create_default_context(cadata=new_cert)
    held = await connect(url(runtime, "wss"), ssl=old_ctx, ping_interval=None)
    await runtime.apply(parse_snapshot(config("2", new_cert, new_key)))
    async with connect(url(runtime, "wss"), ssl=new_ctx, ping_interval=None) as fresh:
        await fresh.send("new")
        assert await fresh.recv() == "new"
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect(url(runtime, "wss"), ssl=old_ctx, ping_interval=None)
    await held.send("old")
    assert await held.recv() == "old"
    await held.close()
    assert isinstance(held.close_code, int)
