"""Failed TLS handshakes are counted by listener and reason in a running data plane
(`wslb_dataplane_tls_handshake_failures_total`): uvloop never tells the app protocol about
them, so the count comes from the SSL object OpenSSL fails in. Real clients fail here:
plain HTTP to the TLS port, TLS 1.2 against a 1.3-only listener, a client that does not
trust the certificate."""

from __future__ import annotations

import asyncio
import re
import ssl
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.integration.conftest import DataplaneProcess, TlsFiles, listener, raw_request, snapshot
from tests.integration.tls_clients import blocking_tls, certificates, client_context, https_listener

pytestmark = pytest.mark.integration

PLAIN_HTTP = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
SERIES = re.compile(
    r'^wslb_dataplane_tls_handshake_failures_total\{listener="(\w+)",reason="(\w+)"\} (\S+)$',
    re.MULTILINE,
)


async def failures(proc: DataplaneProcess) -> dict[tuple[str, str], float]:
    status, text = await proc.admin("/metrics")
    assert status == 200
    return {(name, reason): float(value) for name, reason, value in SERIES.findall(text)}


def tls_handshake(port: int, context: ssl.SSLContext) -> None:
    """A blocking client: it sends its alert on a certificate it does not trust."""
    with blocking_tls(port, context):
        pass


async def tls_client(port: int, context: ssl.SSLContext) -> None:
    """A TLS handshake that must fail on the client's side too."""
    with pytest.raises(ssl.SSLError):
        await asyncio.to_thread(tls_handshake, port, context)


async def test_failed_handshakes_are_counted_by_reason(
    backends: Any, dataplane_process: Any, tls: TlsFiles
) -> None:
    (backend,) = await backends(1)
    config = https_listener(
        tls, {"endpoints": [backend.endpoint]}, tls=certificates(tls, minVersion="1.3")
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
    await raw_request(port, PLAIN_HTTP, read_timeout=10)  # read until the balancer closes
    await poll(proc, {("wss", "http_request"): 1.0})

    # TLS 1.2 against a listener that wants 1.3.
    old = client_context(tls, maximum=ssl.TLSVersion.TLSv1_2)
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
    config = https_listener(tls, {"endpoints": [backend.endpoint]})
    kept = listener("ws", backends={"endpoints": [backend.endpoint]})
    proc: DataplaneProcess = dataplane_process(snapshot(config, kept))
    await proc.wait_ready()
    await raw_request(config["port"], PLAIN_HTTP, read_timeout=10)
    await poll(proc, {("wss", "http_request"): 1.0})
    proc.write_config(snapshot(kept, version="2"))
    await poll(proc, {})
