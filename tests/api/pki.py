"""Certificates that our CA would never issue, for the refusal tests: expired ones, another CA's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photonstream.api.auth.ca import CertificateAuthority


def signed_client_certificate(
    ca: CertificateAuthority, name: str, not_before: dt.datetime, not_after: dt.datetime, out_dir: Path
) -> tuple[Path, Path]:
    """A client certificate signed by ``ca`` with any validity window (e.g. one already over)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca.key, hashes.SHA384())
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out_dir / f"{name}.crt", out_dir / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def expired_client_certificate(ca: CertificateAuthority, name: str, out_dir: Path) -> tuple[Path, Path]:
    now = dt.datetime.now(dt.UTC)
    return signed_client_certificate(ca, name, now - dt.timedelta(days=10), now - dt.timedelta(days=1), out_dir)
