"""What a running data plane's TLS sends per handshake, where it costs: no TLS 1.3 session
ticket (a ticket costs as much as a 1.3 resumption saves, see `dataplane.tls`), while a
TLS 1.2 client still gets one and resumes with it (a 1.2 resumption skips the key
exchange and the signature), through the listener's SNI-switching front context."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import pytest

from tests.integration.conftest import DataplaneProcess, TlsFiles, snapshot, upgrade_request
from tests.integration.tls_clients import blocking_tls, client_context, https_listener

pytestmark = pytest.mark.integration


def upgrade(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ssl.SSLSession, bool]:
    """One WSS upgrade with a blocking client (asyncio cannot offer a session); the
    client's session once the 101 is read (TLS 1.3 tickets arrive before it), and
    whether the offered session was resumed."""
    with blocking_tls(port, context, session) as conn:
        conn.sendall(upgrade_request())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            assert chunk, f"closed before the answer: {head!r}"
            head += chunk
        assert head.startswith(b"HTTP/1.1 101"), head
        assert conn.session is not None
        return conn.session, conn.session_reused


async def test_tls13_gets_no_ticket_and_tls12_resumes(
    backends: Any, dataplane_process: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    port = config["port"]
    proc: DataplaneProcess = dataplane_process(snapshot(config))
    await proc.wait_ready()

    modern = client_context(tls, minimum=ssl.TLSVersion.TLSv1_3)
    session, _ = await asyncio.to_thread(upgrade, port, modern)
    assert not session.has_ticket

    old = client_context(tls, maximum=ssl.TLSVersion.TLSv1_2)
    session, resumed = await asyncio.to_thread(upgrade, port, old)
    assert session.has_ticket and not resumed
    _, resumed = await asyncio.to_thread(upgrade, port, old, session)
    assert resumed
