"""TLS clients of the integration tests and the HTTPS listener they reach, written once:
the tests that check what a WSS listener does differ in what they assert, not in how they
declare the listener or trust its self-signed certificate (the `tls` fixture)."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.integration.conftest import TlsFiles, listener


def certificates(files: TlsFiles, **fields: Any) -> dict[str, Any]:
    """A listener's `tls` block serving the test certificate; `fields` add settings
    (camelCase, e.g. `minVersion`)."""
    pair = {"certificatePem": files.cert_pem, "privateKeyPem": files.key_pem}
    return {"certificates": [pair], **fields}


def https_listener(
    files: TlsFiles, backends: dict[str, Any], name: str = "wss", **fields: Any
) -> dict[str, Any]:
    """An HTTPS (WSS) listener dict with the test certificate on a free port; `fields`
    override anything, `tls` included."""
    fields.setdefault("tls", certificates(files))
    return listener(name, protocol="HTTPS", backends=backends, **fields)


def client_context(
    files: TlsFiles,
    *,
    minimum: ssl.TLSVersion | None = None,
    maximum: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A client context that trusts the test certificate only, with optional bounds on
    the protocol version it offers."""
    context = ssl.create_default_context(cadata=files.cert_pem)
    if minimum is not None:
        context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    return context


@contextmanager
def blocking_tls(
    port: int, context: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> Iterator[ssl.SSLSocket]:
    """A TLS connection to 127.0.0.1 from a blocking client, like curl: unlike an asyncio
    client it can offer a session, and on a certificate it does not trust it sends its
    alert before closing (an asyncio client aborts and drops it, so the server sees EOF).
    Call it in a thread from async tests."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost", session=session) as conn,
    ):
        yield conn
