"""Self-signed certificates for the demo and for tests (ECDSA P-256).

Production certificates come from Kubernetes Secrets; this only exists so that
`make run` serves WSS out of the box and tests can build a real TLS setup.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(names: list[str], days: int = 365) -> tuple[str, str]:
    """(certificate PEM, private key PEM) valid for DNS names and IP addresses in `names`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return cert_pem, key_pem


def ensure_files(directory: Path, names: list[str]) -> tuple[Path, Path]:
    """Write tls.crt / tls.key into `directory` unless both exist already."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    if not (cert_path.exists() and key_path.exists()):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_pem, key_pem = self_signed(names)
        cert_path.write_text(cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_text(key_pem)
    return cert_path, key_path
