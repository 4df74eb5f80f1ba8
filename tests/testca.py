"""Throwaway X.509 certificates for tests (``cryptography``): CA roots, and server
certificates they sign. Nothing here is trusted anywhere but in the test that made it."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, both PEM text."""

    cert_pem: str
    key_pem: str
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _issue(subject: str, key, issuer: Issued | None, *, ca: bool, not_after: datetime.datetime | None,
           sans: list[x509.GeneralName]) -> Issued:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    not_after = not_after or _now() + datetime.timedelta(days=30)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.cert.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(_now(), not_after) - datetime.timedelta(days=1))
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return Issued(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, cert, key)


def root_ca(name: str = "mlox test root", not_after: datetime.datetime | None = None) -> Issued:
    """A self-signed CA certificate (valid 30 days unless ``not_after``)."""
    return _issue(name, ec.generate_private_key(ec.SECP256R1()), None, ca=True, not_after=not_after, sans=[])


def server_cert(issuer: Issued, *names: str) -> Issued:
    """A server certificate signed by ``issuer`` for host names and IP addresses."""
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    return _issue(names[0], ec.generate_private_key(ec.SECP256R1()), issuer, ca=False, not_after=None, sans=sans)
