"""
Self-signed certificates for TLS tests, made when a test needs one (with
C{cryptography}, which Twisted's C{tls} extra brings).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(host: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """
    A fresh EC key and a certificate for C{host} (an IP address or a name,
    in the subject alternative name), valid from an hour ago for a day.

    :returns: the key and the certificate, in PEM.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    try:
        alternative: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alternative = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alternative]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def write_self_signed(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """
    Write L{self_signed} as C{key.pem} and C{cert.pem} in C{directory}.

    :returns: their paths.
    """
    key_pem, cert_pem = self_signed(host)
    key, cert = directory / "key.pem", directory / "cert.pem"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    return key, cert


def spki_fingerprint(cert_pem: bytes) -> str:
    """
    The base64 SHA-256 of a certificate's public key, as Chromium's
    C{--ignore-certificate-errors-spki-list} takes it (to trust exactly
    this key, and nothing else, without a CA).
    """
    certificate = x509.load_pem_x509_certificate(cert_pem)
    spki = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode("ascii")
