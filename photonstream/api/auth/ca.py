"""Our own certificate authority: a directory holding the CA key and certificate, what it issued, and its CRL.

Layout of a CA directory
    ca.key, ca.crt           the CA's EC P-384 key (mode 0600) and self-signed certificate
    token.key                EC P-256 key that signs our bearer tokens (ES256), mode 0600
    token.jwks.json          its public half as a JWKS (what a server needs to check our tokens)
    index.json               every certificate issued: serial, kind, name, experiments, groups, validity, revocation
    issued/<serial>.crt      a copy of each issued certificate (never its private key)
    crl.pem                  the revocation list, re-signed on every revocation; servers re-read it when it changes

A server needs only ``ca.crt``, ``crl.pem`` and ``token.jwks.json``; keep the two keys on the machine that issues.

Identity in a user certificate (see ``photonstream.api.auth.certificates.claims_of``)
    subject CN                                  the identity
    SAN URI urn:photonstream:experiment:<name>  one per experiment the issuer grants
    SAN URI urn:photonstream:group:<name>       one per group the identity belongs to
    extended key usage                          clientAuth
SAN URIs rather than a private extension: every X.509 tool prints them, they need no OID of our own, and TLS stacks
do not interpret them in a client certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photonstream.api.errors import CertificateAuthorityError
from photonstream.errors import ConfigError

URN_EXPERIMENT = "urn:photonstream:experiment:"
URN_GROUP = "urn:photonstream:group:"

IDENTITY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

CA_KEY = "ca.key"
CA_CERT = "ca.crt"
TOKEN_KEY = "token.key"
TOKEN_JWKS = "token.jwks.json"
INDEX = "index.json"
CRL = "crl.pem"
ISSUED = "issued"

CRL_VALIDITY = dt.timedelta(days=30)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_identity(name: str) -> str:
    if not IDENTITY_PATTERN.match(name):
        raise ConfigError(f"identity {name!r}: use 1-128 letters, digits, '_', '.', '@', '-' (first a letter/digit)")
    return name


def check_names(kind: str, names: Iterable[str]) -> tuple[str, ...]:
    out = []
    for name in names:
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"{kind} {name!r}: use 1-64 letters, digits, '_', '.', '-' (first a letter/digit)")
        out.append(name)
    return tuple(sorted(set(out)))


def parse_serial(text: str) -> int:
    """A serial as the CLI and the API show it: hexadecimal, with or without ``0x``."""
    cleaned = text.strip().lower().removeprefix("0x").replace(":", "")
    try:
        value = int(cleaned, 16)
    except ValueError:
        raise ConfigError(f"serial {text!r} is not a hexadecimal number") from None
    if value <= 0:
        raise ConfigError(f"serial {text!r} must be positive")
    return value


def format_serial(serial: int) -> str:
    return f"{serial:x}"


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise CertificateAuthorityError(f"{path}: cannot read the private key ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateAuthorityError(f"{path}: expected an EC private key")
    return key


def load_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise CertificateAuthorityError(f"{path}: cannot read the certificate ({exc})") from None


@dataclass
class IssuedRecord:
    """One line of the CA's index."""

    serial: str
    kind: str  # user | service
    name: str
    not_before: str
    not_after: str
    experiments: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    revoked_at: str | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class IssuedFiles:
    serial: str
    certificate: Path
    private_key: Path
    not_after: dt.datetime


class CertificateAuthority:
    """A CA directory opened for issuing (it needs ``ca.key``)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not (self.directory / CA_CERT).is_file() or not (self.directory / CA_KEY).is_file():
            raise CertificateAuthorityError(
                f"{self.directory}: not a CA directory (no {CA_CERT}/{CA_KEY}); run 'photonstream ca init' first"
            )
        self.certificate = load_certificate(self.directory / CA_CERT)
        self.key = _load_key(self.directory / CA_KEY)

    # --- creation -------------------------------------------------------------------------------------------

    @classmethod
    def init(
        cls, directory: str | Path, common_name: str = "photonstream CA", days: int = 3650, force: bool = False
    ) -> CertificateAuthority:
        """Create a CA directory: CA key and certificate, token-signing key, empty index and CRL."""
        path = Path(directory)
        if (path / CA_KEY).exists() and not force:
            raise ConfigError(f"{path}: already holds a CA ({CA_KEY}); pass --force to replace it")
        if days < 1:
            raise ConfigError(f"days: must be at least 1 (got {days})")
        path.mkdir(parents=True, exist_ok=True)
        (path / ISSUED).mkdir(exist_ok=True)
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = utcnow()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )
        _write_private(path / CA_KEY, _key_pem(key))
        _write_public(path / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
        token_key = ec.generate_private_key(ec.SECP256R1())
        _write_private(path / TOKEN_KEY, _key_pem(token_key))
        from photonstream.api.auth.tokens import jwks_of

        _write_public(path / TOKEN_JWKS, json.dumps(jwks_of(token_key.public_key()), indent=1).encode())
        _write_public(path / INDEX, b"[]\n")
        ca = cls(path)
        ca.write_crl()
        return ca

    # --- issuing --------------------------------------------------------------------------------------------

    def _builder(self, common_name: str, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.CertificateBuilder:
        if days < 1:
            raise ConfigError(f"days: must be at least 1 (got {days})")
        now = utcnow()
        not_after = min(now + dt.timedelta(days=days), self.certificate.not_valid_after_utc)
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.certificate.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )

    def _finish(
        self, builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey, record: IssuedRecord, out_dir: Path
    ) -> IssuedFiles:
        cert = builder.sign(self.key, hashes.SHA384())
        serial = format_serial(cert.serial_number)
        record.serial = serial
        record.not_before = cert.not_valid_before_utc.isoformat()
        record.not_after = cert.not_valid_after_utc.isoformat()
        out_dir.mkdir(parents=True, exist_ok=True)
        pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path = out_dir / f"{record.name}.crt"
        key_path = out_dir / f"{record.name}.key"
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, pem)
        (self.directory / ISSUED).mkdir(exist_ok=True)
        _write_public(self.directory / ISSUED / f"{serial}.crt", pem)
        self._save_index([*self.records(), record])
        return IssuedFiles(serial, cert_path, key_path, cert.not_valid_after_utc)

    def issue_user(
        self,
        name: str,
        experiments: Sequence[str] = (),
        groups: Sequence[str] = (),
        days: int = 30,
        out_dir: str | Path = ".",
    ) -> IssuedFiles:
        """A client certificate for ``name`` carrying its experiments and groups (see the module docstring)."""
        check_identity(name)
        exps = check_names("experiment", experiments)
        grps = check_names("group", groups)
        key = ec.generate_private_key(ec.SECP256R1())
        uris = [x509.UniformResourceIdentifier(URN_EXPERIMENT + e) for e in exps]
        uris += [x509.UniformResourceIdentifier(URN_GROUP + g) for g in grps]
        builder = self._builder(name, key.public_key(), days).add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        if uris:
            builder = builder.add_extension(x509.SubjectAlternativeName(uris), critical=False)
        record = IssuedRecord("", "user", name, "", "", experiments=list(exps), groups=list(grps))
        return self._finish(builder, key, record, Path(out_dir))

    def issue_service(
        self, name: str, hosts: Sequence[str] = (), days: int = 365, out_dir: str | Path = "."
    ) -> IssuedFiles:
        """A server certificate for ``name``, valid for localhost, 127.0.0.1, ::1 and ``hosts`` (names or IPs)."""
        check_identity(name)
        names: list[x509.GeneralName] = []
        seen: set[str] = set()
        for host in ["localhost", "127.0.0.1", "::1", *hosts]:
            if host in seen:
                continue
            seen.add(host)
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                if not re.match(r"^[A-Za-z0-9*][A-Za-z0-9.-]{0,252}$", host):
                    raise ConfigError(f"host {host!r} is neither an IP address nor a DNS name") from None
                names.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            self._builder(name, key.public_key(), days)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
        )
        record = IssuedRecord("", "service", name, "", "", hosts=sorted(seen))
        return self._finish(builder, key, record, Path(out_dir))

    # --- index and revocation -------------------------------------------------------------------------------

    def records(self) -> list[IssuedRecord]:
        path = self.directory / INDEX
        if not path.exists():
            return []
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise CertificateAuthorityError(f"{path}: unreadable index ({exc})") from None
        return [IssuedRecord(**row) for row in rows]

    def _save_index(self, records: list[IssuedRecord]) -> None:
        _write_public(self.directory / INDEX, json.dumps([asdict(r) for r in records], indent=1).encode())

    def revoke(self, serial: str, reason: str = "") -> IssuedRecord:
        """Mark a certificate revoked and re-sign the CRL. Revoking twice is refused."""
        number = parse_serial(serial)
        records = self.records()
        for record in records:
            if parse_serial(record.serial) == number:
                if record.revoked_at:
                    raise ConfigError(f"serial {record.serial} was already revoked at {record.revoked_at}")
                record.revoked_at = utcnow().isoformat()
                record.revocation_reason = reason or None
                self._save_index(records)
                self.write_crl()
                return record
        raise ConfigError(f"serial {format_serial(number)} was not issued by this CA (see 'photonstream ca list')")

    def write_crl(self) -> Path:
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + CRL_VALIDITY)
        )
        for record in self.records():
            if record.revoked_at:
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(parse_serial(record.serial))
                    .revocation_date(dt.datetime.fromisoformat(record.revoked_at))
                    .build()
                )
        crl = builder.sign(self.key, hashes.SHA384())
        path = self.directory / CRL
        _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
        return path

    def token_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / TOKEN_KEY
        if not path.is_file():
            raise CertificateAuthorityError(f"{self.directory}: no {TOKEN_KEY}; this CA cannot sign tokens")
        return _load_key(path)
