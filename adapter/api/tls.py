"""TLS for the external metrics API listener.

The kube-aggregator only speaks HTTPS to an APIService, so the API port is HTTPS always. With no
certificate given, a self-signed one is generated at start (``cryptography``) into ``--cert-dir`` and
reused on the next start while it is valid, so a local ``kubectl`` or ``curl -k`` can talk to it at
once. TLS 1.2 is the minimum.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SELF_SIGNED_CERT = "apiserver.crt"
SELF_SIGNED_KEY = "apiserver.key"
#: A generated certificate is replaced when less than this is left of its life.
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    cert_file: Path
    key_file: Path
    generated: bool


def _still_valid(cert_file: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def ensure_self_signed(cert_dir: Path, extra_names: tuple[str, ...] = ()) -> CertPair:
    """Return a usable self-signed pair in ``cert_dir``, generating it when absent or near expiry."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_file = cert_dir / SELF_SIGNED_CERT
    key_file = cert_dir / SELF_SIGNED_KEY
    if cert_file.exists() and key_file.exists() and _still_valid(cert_file):
        return CertPair(cert_file, key_file, generated=False)
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["localhost", socket.gethostname(), "latency-adapter", *extra_names]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names) if n]
    san += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "latency-adapter self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_file.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    tmp_key.replace(key_file)
    tmp_cert = cert_file.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp_cert.replace(cert_file)
    return CertPair(cert_file, key_file, generated=True)


def server_context(pair: CertPair) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(pair.cert_file), str(pair.key_file))
    return ctx
