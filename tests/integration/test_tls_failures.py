"""Failed TLS handshakes are counted by listener and reason in a running data plane
(`wslb_dataplane_tls_handshake_failures_total`): uvloop never tells the app protocol about
them, so the count comes from the SSL object OpenSSL fails in. Real clients fail here:
plain HTTP to the TLS port, TLS 1.2 against a 1.3-only listener, a client that does not
trust the certificate."""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import DataplaneProcess, TlsFiles, listener, snapshot

pytestmark = pytest.mark.integration

SERIES = re.compile(
    r'^wslb_dataplane_tls_handshake_failures_total\{listener="(\w+)",reason="(\w+)"\} (\S+)$',
    re.MULTILINE,
)


async def failures(proc: DataplaneProcess) -> dict[tuple[str, str], float]:
    status, text = await proc.admin("/metrics")
    assert status == 200
    return {(name, reason): float(value) for name, reason, value in SERIES.findall(text)}


def tls_handshake(port: int, context: ssl.SSLContext) -> None:
    """A blocking client, like curl: on a certificate it does not trust it sends its alert
    before closing (an asyncio client aborts and drops it; the server then sees an EOF)."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost"),
    ):
        pass


async def tls_client(port: int, context: ssl.SSLContext) -> None:
    """A TLS handshake that must fail on the client's side too."""
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(tls_handshake, port, context)


async def test_failed_handshakes_are_counted_by_reason(
    backends: Any, dataplane_process: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = listener(
        "wss",
        protocol="HTTPS",
        tls={
            "certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}],
            "minVersion": "1.3",
        },
        backends={"endpoints": [backend.endpoint]},
    )
    port = config["port"]
    proc: DataplaneProcess = dataplane_process(snapshot(config))
    await proc.wait_ready()

    # A good client first: nothing is counted for it.
    async with connect(f"wss://127.0.0.1:{port}/", ssl=tls.client_context) as ws:
        await ws.send("fine")
        assert await ws.recv() == "fine"
    assert await failures(proc) == {}

    # Plain HTTP to the TLS port.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        await reader.read()  # the load balancer closes the connection
    writer.close()
    await poll(proc, {("wss", "http_request"): 1.0})

    # TLS 1.2 against a listener that wants 1.3.
    old = ssl.create_default_context(cadata=tls.cert_pem)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    await tls_client(port, old)
    await poll(proc, {("wss", "http_request"): 1.0, ("wss", "protocol_version"): 1.0})

    # A client that does not trust the certificate aborts with an alert.
    stranger = ssl.create_default_context()  # the system's CAs, not our self-signed one
    await tls_client(port, stranger)
    await poll(
        proc,
        {
            ("wss", "http_request"): 1.0,
            ("wss", "protocol_version"): 1.0,
            ("wss", "certificate_rejected"): 1.0,
        },
    )


async def poll(proc: DataplaneProcess, expected: dict[tuple[str, str], float]) -> None:
    """Until the failure counters read exactly `expected` (a deadline, no fixed sleep)."""
    last: dict[tuple[str, str], float] = {}
    async with asyncio.timeout(10):
        while True:
            last = await failures(proc)
            if last == expected:
                return
            await asyncio.sleep(0.05)


async def test_a_listener_that_leaves_takes_its_failure_series_along(
    backends: Any, dataplane_process: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = listener(
        "wss",
        protocol="HTTPS",
        tls={"certificates": [{"certificatePem": tls.cert_pem, "privateKeyPem": tls.key_pem}]},
        backends={"endpoints": [backend.endpoint]},
    )
    kept = listener("ws", backends={"endpoints": [backend.endpoint]})
    proc: DataplaneProcess = dataplane_process(snapshot(config, kept))
    await proc.wait_ready()
    reader, writer = await asyncio.open_connection("127.0.0.1", config["port"])
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    async with asyncio.timeout(10):
        await reader.read()
    writer.close()
    await poll(proc, {("wss", "http_request"): 1.0})
    proc.write_config(snapshot(kept, version="2"))
    await poll(proc, {})
