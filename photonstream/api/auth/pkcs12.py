"""A user's certificate and key as one passphrase-protected PKCS#12 (``.p12``) file, for importing into a browser.

Browsers take a client certificate only in this form. The file holds the user's key, certificate and the CA
certificate (so the browser can show whom it trusts), encrypted with PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) and
an HMAC-SHA256 integrity check: what current Chromium, Firefox and macOS read; the legacy RC2/3DES formats are not
written. The passphrase is generated here (or given) and travels separately from the file.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from photonstream.errors import ConfigError

KDF_ROUNDS = 200_000
MIN_PASSPHRASE = 8


@dataclass(frozen=True)
class ExportedP12:
    path: Path
    passphrase: str
    identity: str


def new_passphrase() -> str:
    return secrets.token_urlsafe(15)  # 20 characters, 120 bits


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"--key {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"--key {path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"--key {path}: not an EC key (this CA issues P-256 keys)")
    return key


def _certificate(path: Path, option: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror})") from None
    except ValueError:
        raise ConfigError(f"{option} {path}: not a PEM certificate") from None


def export_p12(
    certificate: Path, key: Path, ca_certificate: Path, out: Path, passphrase: str | None = None
) -> ExportedP12:
    """Write ``out`` (mode 0600) from a user's certificate and key; returns its path and passphrase."""
    cert = _certificate(certificate, "CERT")
    private_key = _load_key(key)
    if cert.public_key() != private_key.public_key():
        raise ConfigError(f"--key {key}: it is not the key of {certificate}")
    ca = _certificate(ca_certificate, "--ca")
    if cert.issuer != ca.subject:
        raise ConfigError(f"CERT {certificate}: not issued by the CA in {ca_certificate}")
    passphrase = new_passphrase() if passphrase is None else passphrase
    if len(passphrase) < MIN_PASSPHRASE:
        raise ConfigError(f"passphrase: at least {MIN_PASSPHRASE} characters")
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    identity = str(names[0].value) if names else certificate.stem
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(passphrase.encode())
    )
    data = pkcs12.serialize_key_and_certificates(identity.encode(), private_key, cert, [ca], encryption)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.touch(mode=0o600, exist_ok=True)
    out.chmod(0o600)
    out.write_bytes(data)
    return ExportedP12(out, passphrase, identity)
