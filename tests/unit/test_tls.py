"""dataplane.tls: the listener's front context reports every handshake OpenSSL refuses,
and only those (waiting for the peer's next flight is not a failure)."""

from __future__ import annotations

import ssl

import pytest

from dataplane.certs import self_signed
from dataplane.process_metrics import tls_failure_reason
from dataplane.tls import CertificateSet, front_context
from lbwire.snapshot import Certificate, Tls

pytestmark = pytest.mark.unit


def server(failed: list[ssl.SSLError], min_version: str = "1.2") -> tuple[ssl.SSLContext, str]:
    cert, key = self_signed(["localhost"])
    certificates = CertificateSet(
        Tls(certificates=[Certificate(certificate_pem=cert, private_key_pem=key)])
    )
    return front_context(lambda: certificates, min_version, failed.append), cert


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> bool:
    """Drive both ends over memory BIOs; True when the server's handshake completed."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    front = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        try:
            front.do_handshake()
            return True
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            return False
        c_in.write(s_out.read())
    raise AssertionError("handshake neither finished nor failed")


def test_a_good_handshake_reports_nothing() -> None:
    failed: list[ssl.SSLError] = []
    context, cert = server(failed)
    assert handshake(context, ssl.create_default_context(cadata=cert))
    assert failed == []


def test_plain_http_to_the_tls_port_is_reported() -> None:
    failed: list[ssl.SSLError] = []
    context, _ = server(failed)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    front = context.wrap_bio(incoming, outgoing, server_side=True)
    incoming.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(ssl.SSLError):
        front.do_handshake()
    assert [tls_failure_reason(exc) for exc in failed] == ["http_request"]


def test_an_old_protocol_version_is_reported() -> None:
    failed: list[ssl.SSLError] = []
    context, cert = server(failed, min_version="1.3")
    old = ssl.create_default_context(cadata=cert)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    assert not handshake(context, old)
    assert [tls_failure_reason(exc) for exc in failed] == ["protocol_version"]
