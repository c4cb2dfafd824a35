"""One HTTPS listener, two certificates chosen by SNI (docs/http.md): each client sees the
certificate for the name it sent, the first when it sent none or an unknown one, WSS
works through each, and rotating one certificate keeps live connections."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from websockets.asyncio.client import ClientConnection, connect

from dataplane.certs import self_signed
from dataplane.config import load_file
from lbwire.errors import ConfigError
from lbwire.snapshot import parse_snapshot
from tests.integration.conftest import free_port, listener, snapshot

pytestmark = pytest.mark.integration

A, B = "a.sni.test", "b.sni.test"


def certificate_sans(der: bytes) -> list[str]:
    cert = x509.load_der_x509_certificate(der)
    extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


def client_context(*cert_pems: str, check_hostname: bool = True) -> ssl.SSLContext:
    """Trusts exactly the given self-signed certificates."""
    context = ssl.create_default_context(cadata="".join(cert_pems))
    context.check_hostname = check_hostname
    return context


async def served_sans(port: int, context: ssl.SSLContext, server_name: str) -> list[str]:
    """The DNS SANs of the certificate a TLS client sending `server_name` ("" sends no
    SNI) is shown; the handshake verifies it against `context`."""
    _, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name), 5
    )
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert ssl_object.server_hostname == (server_name or None)
        der = ssl_object.getpeercert(binary_form=True)
        assert der is not None
        return certificate_sans(der)
    finally:
        writer.close()


def peer_sans(connection: ClientConnection) -> list[str]:
    ssl_object = connection.transport.get_extra_info("ssl_object")
    return certificate_sans(ssl_object.getpeercert(binary_form=True))


async def wss(port: int, context: ssl.SSLContext, server_name: str) -> ClientConnection:
    return await connect(
        f"wss://127.0.0.1:{port}/",
        ssl=context,
        server_hostname=server_name,
        ping_interval=None,
        open_timeout=5,
    )


async def echoes(connection: ClientConnection, text: str) -> bool:
    await connection.send(text)
    return await asyncio.wait_for(connection.recv(), 5) == text


def two_certificates(backend: Any, port: int, a: tuple[str, str], b: tuple[str, str]) -> Any:
    """No serverNames: each certificate is picked by its own DNS SANs."""
    return listener(
        "wss",
        port=port,
        protocol="HTTPS",
        tls={
            "certificates": [
                {"certificatePem": a[0], "privateKeyPem": a[1]},
                {"certificatePem": b[0], "privateKeyPem": b[1]},
            ]
        },
        backends={"endpoints": [backend.endpoint]},
    )


async def test_each_client_gets_the_certificate_for_its_server_name(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    a, b = self_signed([A, f"*.{A}"]), self_signed([B])
    port = free_port()
    await dataplane(snapshot(two_certificates(backend, port, a, b)))
    strict = client_context(a[0], b[0])
    loose = client_context(a[0], b[0], check_hostname=False)

    assert await served_sans(port, strict, A) == [A, f"*.{A}"]
    assert await served_sans(port, strict, f"x.{A}") == [A, f"*.{A}"]
    assert await served_sans(port, strict, B) == [B]
    assert await served_sans(port, loose, "") == [A, f"*.{A}"], "no SNI: the first"
    assert await served_sans(port, loose, "unknown.sni.test") == [A, f"*.{A}"]
    with pytest.raises(ssl.SSLCertVerificationError):
        await served_sans(port, strict, "unknown.sni.test")

    for name, sans in ((A, [A, f"*.{A}"]), (B, [B])):
        connection = await wss(port, strict, name)
        try:
            assert peer_sans(connection) == sans
            assert await echoes(connection, f"through {name}")
        finally:
            await connection.close()


async def test_rotating_one_certificate_keeps_live_wss_and_serves_the_new_one(
    backends: Any, dataplane: Any
) -> None:
    (backend,) = await backends(1)
    a, old_b, new_b = self_signed([A]), self_signed([B]), self_signed([B])
    port = free_port()
    runtime = await dataplane(snapshot(two_certificates(backend, port, a, old_b), version="1"))
    held_b = await wss(port, client_context(old_b[0]), B)
    held_a = await wss(port, client_context(a[0]), A)

    await runtime.apply(
        parse_snapshot(snapshot(two_certificates(backend, port, a, new_b), version="2"))
    )

    fresh = await wss(port, client_context(new_b[0]), B)
    try:
        assert await echoes(fresh, "new certificate")
    finally:
        await fresh.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        await served_sans(port, client_context(old_b[0]), B)
    assert await served_sans(port, client_context(a[0]), A) == [A], "the other one stays"
    assert await echoes(held_b, "old certificate, same connection")
    assert await echoes(held_a, "untouched certificate, same connection")
    await held_b.close()
    await held_a.close()


async def test_standalone_yaml_with_two_certificate_files(
    backends: Any, dataplane_process: Any, tmp_path: Path
) -> None:
    (backend,) = await backends(1)
    a, b = self_signed([A]), self_signed([B])
    for name, (cert, key) in (("a", a), ("b", b)):
        (tmp_path / f"{name}.crt").write_text(cert)
        (tmp_path / f"{name}.key").touch(mode=0o600)
        (tmp_path / f"{name}.key").write_text(key)
    port = free_port()
    config = snapshot(
        listener(
            "wss",
            port=port,
            protocol="HTTPS",
            tls={
                "certificates": [
                    {"certificateFile": "a.crt", "privateKeyFile": "a.key"},
                    {"certificateFile": "b.crt", "privateKeyFile": "b.key", "serverNames": [B]},
                ]
            },
            backends={"endpoints": [backend.endpoint]},
        )
    )
    proc = dataplane_process(config)
    await proc.wait_ready()
    both = client_context(a[0], b[0])
    assert await served_sans(port, both, A) == [A], proc.log()
    assert await served_sans(port, both, B) == [B]
    assert await served_sans(port, client_context(a[0], b[0], check_hostname=False), "") == [A]
    connection = await wss(port, both, B)
    try:
        assert await echoes(connection, "standalone")
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("certificate", "problem"),
    [
        (
            {"certificateFile": "a.crt", "certificatePem": "x", "privateKeyFile": "a.key"},
            "certificates[1].certificateFile: give certificateFile or certificatePem, not both",
        ),
        (
            {"certificateFile": ["a.crt"], "privateKeyFile": "a.key"},
            "certificates[1].certificateFile: must be a file path",
        ),
        (
            {"certificateFile": "a.crt", "privateKeyFile": "missing.key"},
            "certificates[1].privateKeyFile: {tmp}/missing.key: No such file or directory",
        ),
    ],
)
def test_standalone_yaml_certificate_problems_name_the_field(
    tmp_path: Path, certificate: dict[str, Any], problem: str
) -> None:
    cert, key = self_signed([A])
    (tmp_path / "a.crt").write_text(cert)
    (tmp_path / "a.key").write_text(key)
    good = {"certificateFile": "a.crt", "privateKeyFile": "a.key"}
    config = snapshot(listener("wss", protocol="HTTPS", tls={"certificates": [good, certificate]}))
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load_file(path)
    expected = problem.format(tmp=tmp_path.resolve())
    assert f"listeners[0].tls.{expected}" in str(caught.value)
