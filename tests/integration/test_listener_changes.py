"""What a listener change does to live connections and to the listener's metrics:
TLS settings apply to new handshakes on the same socket; only a new address or port
rebinds, and the old socket's connections stay until they end or drain; a removed
listener's series all go together."""

from __future__ import annotations

import copy
import ssl
from typing import Any

import pytest
from prometheus_client import generate_latest
from websockets.asyncio.client import connect

from dataplane.runtime import Runtime
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import TlsFiles, free_port, listener, snapshot, url, wait_until

pytestmark = pytest.mark.integration


def client_context(tls: TlsFiles, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=tls.cert_pem)
    if max_version is not None:
        context.maximum_version = max_version
    return context


async def test_tls_min_version_change_keeps_live_connections_and_the_socket(
    backends: Any, dataplane: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    port = free_port()

    def config(version: str, min_version: str) -> dict[str, Any]:
        return snapshot(
            listener(
                "wss",
                port=port,
                protocol="HTTPS",
                tls={
                    "minVersion": min_version,
                    "certificates": [
                        {"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}
                    ],
                },
                backends={"endpoints": [backend.endpoint]},
            ),
            version=version,
        )

    runtime: Runtime = await dataplane(config("1", "1.2"))
    before = runtime.listeners["wss"]
    tls12 = client_context(tls, ssl.TLSVersion.TLSv1_2)
    held = await connect(url(runtime, "wss"), ssl=tls12, ping_interval=None)
    await runtime.apply(parse_snapshot(config("2", "1.3")))
    # Same listener, same socket, nothing draining.
    assert runtime.listeners["wss"] is before
    assert not runtime.retired
    assert not any(connection.draining for connection in before.connections)
    # New handshakes follow the new policy ...
    with pytest.raises(OSError):  # an alert or a reset, depending on timing
        await connect(url(runtime, "wss"), ssl=tls12, ping_interval=None, open_timeout=3)
    async with connect(url(runtime, "wss"), ssl=client_context(tls)) as fresh:
        assert fresh.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
        await fresh.send("new")
        assert await fresh.recv() == "new"
    # ... while the live TLS 1.2 connection goes on.
    assert held.transport.get_extra_info("ssl_object").version() == "TLSv1.2"
    await held.send("still here")
    assert await held.recv() == "still here"
    await held.close()


async def test_port_change_rebinds_and_old_connections_stay_until_the_drain_ends(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    first = snapshot(listener(drainTimeoutSeconds=1.5, backends={"endpoints": [backend.endpoint]}))
    runtime: Runtime = await dataplane(first)
    held = await connect(url(runtime), ping_interval=None)
    moved = copy.deepcopy(first)
    moved["version"] = "2"
    moved["listeners"][0]["port"] = free_port()
    await runtime.apply(parse_snapshot(moved))
    async with connect(url(runtime), ping_interval=None) as fresh:  # the new port
        await fresh.send("new port")
        assert await fresh.recv() == "new port"
    await held.send("old socket")
    assert await held.recv() == "old socket"
    await wait_until(lambda: held.close_code is not None, timeout=5)
    assert held.close_code == 1001


def listener_series(runtime: Runtime, name: str) -> list[str]:
    text = generate_latest(runtime.metrics.registry).decode()
    return [
        line
        for line in text.splitlines()
        if not line.startswith("#") and f'listener="{name}"' in line
    ]


async def test_a_removed_listeners_series_all_go_together(backends: Any, dataplane: Any) -> None:
    (backend,) = await backends(1)
    both = snapshot(
        listener("keep", backends={"endpoints": [backend.endpoint]}),
        listener("gone", drainTimeoutSeconds=0, backends={"endpoints": [backend.endpoint]}),
    )
    runtime: Runtime = await dataplane(both)
    for name in ("keep", "gone"):
        async with connect(url(runtime, name), ping_interval=None) as ws:
            await ws.send("x")
            assert await ws.recv() == "x"
    gone_before = listener_series(runtime, "gone")
    assert any("wslb_dataplane_messages_total" in line for line in gone_before)
    assert any("wslb_dataplane_upgrades_total" in line for line in gone_before)
    await wait_until(lambda: not runtime.listeners["gone"].connections)
    only_keep = copy.deepcopy(both)
    only_keep["version"] = "2"
    only_keep["listeners"] = [only_keep["listeners"][0]]
    await runtime.apply(parse_snapshot(only_keep))
    await wait_until(lambda: not runtime.retired, timeout=10)
    assert listener_series(runtime, "gone") == []
    kept = listener_series(runtime, "keep")
    assert any("wslb_dataplane_messages_total" in line for line in kept)
    assert any("wslb_dataplane_upgrades_total" in line for line in kept)
