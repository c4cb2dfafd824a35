"""dataplane.tls: the listener's front context reports every handshake OpenSSL refuses,
and only those (waiting for the peer's next flight is not a failure); certificates are
chosen by SNI as docs/http.md says, by their DNS SANs unless serverNames are given."""

from __future__ import annotations

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from dataplane.certs import self_signed
from dataplane.process_metrics import tls_failure_reason
from dataplane.routing import CertificateChooser
from dataplane.tls import CertificateSet, certificate_names, front_context
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


# --- certificate choice by SNI ----------------------------------------------------------


def der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


def served(server_context: ssl.SSLContext, server_name: str | None) -> bytes:
    """The DER certificate a client sending `server_name` (None: no SNI) is shown."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname=server_name)
    front = server_context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        try:
            client.do_handshake()
            peer = client.getpeercert(binary_form=True)
            assert peer is not None
            return peer
        except ssl.SSLWantReadError:
            pass
        s_in.write(c_out.read())
        try:
            front.do_handshake()
        except ssl.SSLWantReadError:
            pass
        c_in.write(s_out.read())
    raise AssertionError("handshake did not finish")


def without_san(common_name: str) -> tuple[str, str]:
    """A certificate with only a subject CN (no subjectAltName extension)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


def tls_of(*pairs: tuple[str, str], names: list[list[str]] | None = None) -> Tls:
    names = names or [[] for _ in pairs]
    return Tls(
        certificates=[
            Certificate(certificate_pem=cert, private_key_pem=key, server_names=server_names)
            for (cert, key), server_names in zip(pairs, names, strict=True)
        ]
    )


# Names as they would sit in certificates, in order; the first is the default.
RULES_NAMES = [
    ["first.example.com", "shared.example.com"],
    ["*.example.com", "exact.wild.example.com", "shared.example.com"],
    ["*.wild.example.com", "Upper.Example.ORG."],
]
RULES_CASES = [
    (None, 0),
    ("first.example.com", 0),
    ("FIRST.example.com.", 0),
    ("shared.example.com", 0),  # an earlier certificate wins a shared name
    ("a.example.com", 1),  # wildcard
    ("a.b.example.com", 0),  # a wildcard covers one label only
    ("example.com", 0),  # ...and not the bare parent
    ("exact.wild.example.com", 1),  # exact beats the other certificate's wildcard
    ("x.wild.example.com", 2),
    ("upper.example.org", 2),
    ("unknown.test", 0),
    ("localhost", 0),
]


@pytest.mark.parametrize(("server_name", "expected"), RULES_CASES)
def test_sni_choice_follows_the_documented_rules(server_name: str | None, expected: int) -> None:
    pairs = [self_signed([names[0].lstrip("*.")]) for names in RULES_NAMES]
    certificates = CertificateSet(tls_of(*pairs, names=RULES_NAMES))
    context = front_context(lambda: certificates, "1.2")
    assert served(context, server_name) == der(pairs[expected][0])


@pytest.mark.parametrize(("server_name", "expected"), RULES_CASES)
def test_sni_choice_agrees_with_the_routing_chooser(server_name: str | None, expected: int) -> None:
    """docs/http.md describes routing.CertificateChooser: the two must not drift apart."""
    chooser = CertificateChooser(
        [(str(i), [n.lower().rstrip(".") for n in names]) for i, names in enumerate(RULES_NAMES)]
    )
    assert chooser.choose(server_name) == str(expected)


def test_an_empty_server_name_gets_the_default() -> None:
    pairs = [self_signed(["first.test"]), self_signed(["second.test"])]
    certificates = CertificateSet(tls_of(*pairs))
    assert certificates.select("") is certificates.select(None) is certificates.default
    assert certificates.select("second.test") is not certificates.default


def test_names_come_from_the_dns_sans_when_server_names_is_empty() -> None:
    cert, key = self_signed(["a.example.com", "*.B.example.com", "127.0.0.1", "a.example.com."])
    (certificate,) = tls_of((cert, key)).certificates
    assert certificate_names(certificate) == ["a.example.com", "*.b.example.com"]


def test_server_names_replace_the_sans() -> None:
    cert, key = self_signed(["a.example.com", "b.example.com"])
    (certificate,) = tls_of((cert, key), names=[["b.example.com"]]).certificates
    assert certificate_names(certificate) == ["b.example.com"]


def test_two_secret_certificates_are_chosen_by_their_sans_without_server_names() -> None:
    one, two = self_signed(["one.test"]), self_signed(["two.test", "*.two.test"])
    certificates = CertificateSet(tls_of(one, two))
    context = front_context(lambda: certificates, "1.2")
    assert served(context, "two.test") == der(two[0])
    assert served(context, "x.two.test") == der(two[0])
    assert served(context, "one.test") == der(one[0])
    assert served(context, None) == der(one[0])


def test_the_first_certificate_is_the_default_even_when_a_later_one_has_no_names() -> None:
    named, bare = self_signed(["named.test"]), without_san("bare.test")
    certificates = CertificateSet(tls_of(named, bare))
    assert certificates.names == [["named.test"], []]
    context = front_context(lambda: certificates, "1.2")
    assert served(context, None) == der(named[0])
    assert served(context, "bare.test") == der(named[0]), "the subject CN is not a name"


def test_a_certificate_without_names_first_serves_as_the_default() -> None:
    bare, named = without_san("bare.test"), self_signed(["named.test"])
    certificates = CertificateSet(tls_of(bare, named))
    context = front_context(lambda: certificates, "1.2")
    assert served(context, "named.test") == der(named[0])
    assert served(context, "other.test") == der(bare[0])


def session_after_exchange(client_context: ssl.SSLContext) -> ssl.SSLSession:
    """The client's session once a request and an answer have crossed, so the client has
    read whatever the server sent after its handshake (TLS 1.3 tickets come then)."""
    context, _ = server([])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(c_in, c_out, server_hostname="localhost")
    front = context.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for end in (client, front):
            try:
                end.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    s_in.write(c_out.read())
    assert front.read(100) == b"GET / HTTP/1.1\r\n\r\n"
    front.write(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    c_in.write(s_out.read())
    assert client.read(100).startswith(b"HTTP/1.1 101")
    assert client.session is not None
    return client.session


def insecure_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    client.minimum_version = client.maximum_version = version
    return client


def test_a_tls13_handshake_issues_no_session_ticket() -> None:
    # A ticket costs as much as a TLS 1.3 resumption saves (the module docstring).
    session = session_after_exchange(insecure_client(ssl.TLSVersion.TLSv1_3))
    assert not session.has_ticket


def test_a_tls12_handshake_still_gets_a_ticket() -> None:
    # A TLS 1.2 resumption skips the key exchange and the signature: worth a ticket.
    session = session_after_exchange(insecure_client(ssl.TLSVersion.TLSv1_2))
    assert session.has_ticket
