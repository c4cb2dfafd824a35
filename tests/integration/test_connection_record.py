"""The end-of-connection hook: one call per connection, with a complete record of it
(what an access log line needs), for tunnels and for refused handshakes alike."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from dataplane.listener import ListenerRuntime
from dataplane.relay import ConnectionRecord
from dataplane.runtime import Runtime
from dataplane.tunnel import ClientSide
from tests.integration.conftest import TlsFiles, listener, snapshot, url, wait_until
from tests.integration.tls_clients import https_listener

pytestmark = pytest.mark.integration


def capture(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, name: str = "ws"
) -> list[ConnectionRecord]:
    """Wrap the listener's hook; the listener's own bookkeeping still runs. Patched on
    the class (a compiled class's methods cannot be replaced on an instance), for this
    listener only."""
    site = runtime.listeners[name]
    records: list[ConnectionRecord] = []
    original = ListenerRuntime.connection_ended

    def hook(self: ListenerRuntime, connection: ClientSide) -> None:
        original(self, connection)
        if self is site:
            records.append(connection.record())

    monkeypatch.setattr(ListenerRuntime, "connection_ended", hook)
    return records


async def test_a_tunnel_ends_with_one_complete_record(
    backends: Any, dataplane: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    runtime: Runtime = await dataplane(
        snapshot(listener(backends={"endpoints": [backend.endpoint]}))
    )
    records = capture(runtime, monkeypatch)
    async with connect(url(runtime), ping_interval=None) as ws:
        local_port = ws.transport.get_extra_info("sockname")[1]
        for text in ("one", "two", "three"):
            await ws.send(text)
            assert await ws.recv() == text
    await wait_until(lambda: len(records) == 1)
    (record,) = records
    assert (record.client, record.client_port) == ("127.0.0.1", local_port)
    assert (record.listener, record.backend) == ("ws", f"127.0.0.1:{backend.port}")
    assert (record.status, record.rejection) == (101, "")
    assert (record.messages_c2b, record.messages_b2c) == (3, 3)
    assert record.bytes_c2b > 3 * (6 + 3) and record.bytes_b2c >= 3 * (2 + 3)
    assert (record.close_code, record.closed_by) == (1000, "client")
    # uvloop's clock has millisecond steps: a fast handshake may take "0" of them.
    assert 0 <= record.handshake_seconds <= record.duration < 10
    assert record.started > 1_600_000_000


async def test_a_wss_tunnel_record_keeps_the_client_address(
    backends: Any, dataplane: Any, tls: TlsFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The address is read from the transport when needed; a TLS transport forgets it at
    close, so the record made at the end must still have it."""
    (backend,) = await backends(1)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    runtime: Runtime = await dataplane(snapshot(config))
    records = capture(runtime, monkeypatch, "wss")
    async with connect(url(runtime, "wss"), ssl=tls.client_context, ping_interval=None) as ws:
        local_port = ws.transport.get_extra_info("sockname")[1]
        await ws.send("one")
        assert await ws.recv() == "one"
    await wait_until(lambda: len(records) == 1)
    (record,) = records
    assert (record.client, record.client_port) == ("127.0.0.1", local_port)
    assert (record.status, record.close_code, record.closed_by) == (101, 1000, "client")


async def test_a_refused_handshake_ends_with_its_status_and_reason(
    backends: Any, dataplane: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (backend,) = await backends(1)
    config = listener(
        allowedOrigins=["https://app.example.com"], backends={"endpoints": [backend.endpoint]}
    )
    runtime: Runtime = await dataplane(snapshot(config))
    records = capture(runtime, monkeypatch)
    with pytest.raises(InvalidStatus):
        async with connect(url(runtime), origin="https://evil.example.com"):  # type: ignore[arg-type]
            pass
    await wait_until(lambda: len(records) == 1)
    (record,) = records
    assert (record.status, record.rejection, record.backend) == (403, "origin", "")
    assert (record.bytes_c2b, record.close_code, record.closed_by) == (0, 0, "")
