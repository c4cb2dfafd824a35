"""What the controller reads from a certificate Secret's PEM: whether it is usable, and
the DNS names that SNI chooses it by.

This module owns PEM inspection with `cryptography`, cached by content (a Secret is
re-read on every rebuild). It must not look at Secrets or the store: the builder hands
it the text of `tls.crt` and `tls.key`.
"""

from __future__ import annotations

import functools
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller.models import TLS_CERT_KEY, TLS_KEY_KEY

# A name the data plane's SNI table accepts (dataplane/routing.py): DNS labels, or "*." and
# labels. Anything else in a SAN (an IDN in U-labels, a malformed entry) is left out.
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_SNI_NAME = re.compile(rf"(\*\.)?{_LABEL}(\.{_LABEL})*")


@functools.lru_cache(maxsize=256)
def certificate_problem(certificate_pem: str, private_key_pem: str) -> str | None:
    """None when the PEM chain and key load and match; else what is wrong."""
    if not certificate_pem:
        return f"no {TLS_CERT_KEY}"
    if not private_key_pem:
        return f"no {TLS_KEY_KEY}"
    try:
        chain = x509.load_pem_x509_certificates(certificate_pem.encode())
    except ValueError as exc:
        return f"{TLS_CERT_KEY} is not a PEM certificate chain ({exc})"
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        return f"{TLS_KEY_KEY} is not an unencrypted PEM private key ({exc})"
    raw = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        return f"{TLS_KEY_KEY} does not match the first certificate of {TLS_CERT_KEY}"
    return None


@functools.lru_cache(maxsize=256)
def server_names(certificate_pem: str) -> tuple[str, ...]:
    """The DNS names of the leaf certificate's subjectAltName, lowercase, in order, each
    once; empty when it has none (the common name is not used, as TLS clients ignore it).
    Call only on a chain that `certificate_problem` accepted."""
    leaf = x509.load_pem_x509_certificates(certificate_pem.encode())[0]
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return ()
    names: list[str] = []
    for value in extension.value.get_values_for_type(x509.DNSName):
        name = value.lower().rstrip(".")
        if _SNI_NAME.fullmatch(name) and name not in names:
            names.append(name)
    return tuple(names)
