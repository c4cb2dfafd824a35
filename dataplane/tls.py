"""TLS termination for HTTPS (WSS) listeners: SSL contexts and SNI selection.

Owns the server-side OpenSSL settings: TLS 1.2 minimum, AEAD ECDHE suites only, no TLS 1.3
session tickets (below), and certificate choice by SNI. The listener's
socket keeps one front context whose SNI callback reads the current certificate set, so
a config swap rotates certificates and changes the minimum TLS version for new
connections without rebinding the port (live connections keep what they negotiated).

TLS 1.3 session tickets do not pay on a server like this one (callgrind, user-space
instructions per full handshake with an ECDSA P-256 certificate, `hack/wss_cost.py`): each
ticket costs about 170k instructions (6% of the handshake: a session copy, its ASN.1
encoding, encryption and the PSK derivation), and a TLS 1.3 resumption saves about the
same, because it still runs the key exchange and issues a new ticket; it only skips the
certificate and its signature. The ticket key also lives in one worker's context, so a
client resumes only when it comes back to the same worker process while the listener
lives. So `num_tickets = 0`; TLS 1.2 tickets stay (a 1.2 resumption skips the key
exchange too).

Memory (hack/conn-memory.md §7): OpenSSL's internal server session cache stays empty
(`session_stats()["number"]` is 0 after thousands of handshakes, TLS 1.3 and 1.2): with
no 1.3 tickets nothing is cached, and 1.2 tickets are stateless, so the cache costs
nothing and needs no limit. Two 1.3 tickets would not change an idle connection's memory
either (the ticket's session replaces the handshake's); they cost CPU only.

Certificate choice (the rules of docs/http.md, as `routing.CertificateChooser` has them):

- a certificate's names are its `serverNames`, or, when that list is empty, the DNS
  names of its subjectAltName (so a certificate from a Secret needs no extra config);
  IP addresses are never names (SNI cannot carry one), and the subject CN is ignored,
  as browsers do. `serverNames` replaces the SANs: it can narrow a certificate to some
  of its names, never make a client accept a name the certificate lacks;
- an exact name beats a wildcard; `*.example.com` covers exactly one label
  (`a.example.com`, not `a.b.example.com` nor `example.com`), as TLS clients check;
- the first certificate is the default: no SNI, or a name no certificate has;
- a name that two certificates share goes to the earlier one.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable

from cryptography import x509

from lbwire.snapshot import Certificate, Tls

# Modern AEAD suites with forward secrecy for TLS 1.2; TLS 1.3 suites are OpenSSL's.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def set_min_version(context: ssl.SSLContext, min_version: str) -> None:
    """Set the lowest TLS version; on a listening socket's context this applies to new
    handshakes only (OpenSSL copies it into each connection), so no rebind is needed."""
    context.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    )


def _base_context(min_version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    set_min_version(context, min_version)
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.num_tickets = 0  # TLS 1.3: see the module docstring
    context.set_alpn_protocols(["http/1.1"])
    return context


def load_certificate(context: ssl.SSLContext, certificate: Certificate) -> None:
    """Load PEM strings; Python's ssl only reads files, so go through a private temp dir."""
    with tempfile.TemporaryDirectory(prefix="wslb-tls-") as tmp:
        cert_path = os.path.join(tmp, "tls.crt")
        key_path = os.path.join(tmp, "tls.key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as key_file:
            key_file.write(certificate.private_key_pem)
        with open(cert_path, "w") as cert_file:
            cert_file.write(certificate.certificate_pem)
        context.load_cert_chain(cert_path, key_path)


def certificate_names(certificate: Certificate) -> list[str]:
    """The names SNI picks `certificate` by: `serverNames`, else its DNS SANs; lowercase,
    without a trailing dot, in order, each once."""
    names = certificate.server_names or _dns_names(certificate.certificate_pem)
    seen: dict[str, None] = {}
    for name in names:
        name = name.strip().lower().rstrip(".")
        if name:
            seen.setdefault(name, None)
    return list(seen)


def _dns_names(pem: str) -> list[str]:
    """The leaf's DNS subjectAltNames ([] when it has none or cannot be read: OpenSSL
    has already accepted the chain, so it then serves only as a default)."""
    try:
        leaf = x509.load_pem_x509_certificate(pem.encode())
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound):
        return []
    return [str(name) for name in extension.value.get_values_for_type(x509.DNSName)]


class CertificateSet:
    """The certificates of one listener, each in its own context, chosen by SNI (the
    rules in the module docstring)."""

    def __init__(self, tls: Tls) -> None:
        self.first = tls.certificates[0]
        self.names: list[list[str]] = []
        self.by_name: dict[str, ssl.SSLContext] = {}
        self.wildcards: dict[str, ssl.SSLContext] = {}  # "*.example.com" as "example.com"
        contexts = []
        for certificate in tls.certificates:
            context = _base_context(tls.min_version)
            load_certificate(context, certificate)
            contexts.append(context)
            names = certificate_names(certificate)
            self.names.append(names)
            for name in names:
                if name.startswith("*."):
                    self.wildcards.setdefault(name[2:], context)
                else:
                    self.by_name.setdefault(name, context)
        self.default = contexts[0]

    def select(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.by_name.get(name)
        if found is None:
            _, dot, parent = name.partition(".")
            if dot:
                found = self.wildcards.get(parent)
        return found or self.default


# The handshake errors that only mean "more bytes needed", not a failure.
_AGAIN = (ssl.SSLWantReadError, ssl.SSLWantWriteError)


def observed_sslobject(on_failure: Callable[[ssl.SSLError], None]) -> type[ssl.SSLObject]:
    """An SSLObject class that reports each failed handshake before raising it.

    uvloop's SSLProtocol drops a failed server handshake without telling the app protocol
    (no connection_made, no connection_lost, no exception handler for OSErrors), but it
    calls `do_handshake()` on the object the context's `wrap_bio` makes: this is the one
    place that sees every OpenSSL failure, at the cost of one Python frame per call.
    Timeouts and peers that just close during the handshake never get here. A layer that
    makes its SSL objects without this class (dataplane.tls_stream) reports failures
    itself to `failure_observer(context)`."""

    class ObservedSSLObject(ssl.SSLObject):
        report_failure = staticmethod(on_failure)

        def do_handshake(self) -> None:
            try:
                self._sslobj.do_handshake()  # type: ignore[attr-defined]  # what super() does
            except _AGAIN:
                raise
            except ssl.SSLError as exc:
                on_failure(exc)
                raise

    return ObservedSSLObject


def failure_observer(context: ssl.SSLContext) -> Callable[[ssl.SSLError], None] | None:
    """What hears of `context`'s failed handshakes (front_context's `on_failure`), for a
    layer that makes its SSL objects without the context's SSLObject class."""
    report: Callable[[ssl.SSLError], None] | None
    report = getattr(context.sslobject_class, "report_failure", None)
    return report


def front_context(
    current: Callable[[], CertificateSet],
    min_version: str,
    on_failure: Callable[[ssl.SSLError], None] | None = None,
) -> ssl.SSLContext:
    """The context bound to the listening socket; SNI swaps in the chosen certificate;
    `on_failure` hears of every handshake that OpenSSL refuses."""
    context = _base_context(min_version)
    if on_failure is not None:
        context.sslobject_class = observed_sslobject(on_failure)
    # A certificate of its own too, in case a client's hello reaches no SNI callback.
    load_certificate(context, current().first)

    def choose(sslobj: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        sslobj.context = current().select(server_name)

    context.sni_callback = choose
    return context
