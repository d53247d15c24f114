"""Client certificates on the server side: what a certificate claims, and whether our CA vouches for it now.

The TLS layer (uvicorn with ``ssl.CERT_OPTIONAL`` against ``ca.crt``) already refuses a chain
that does not verify; the app checks again (issuer signature, validity, a leaf certificate for clientAuth) because
it also runs behind other ASGI servers, then checks revocation against the CRL file, which it re-reads whenever it
changes; a CRL that is missing, unreadable or not signed by the CA refuses every certificate (fail closed, logged
once, reported by /v1/health). Only a leaf (CA:FALSE) with extendedKeyUsage clientAuth identifies a user: the CA's
own certificate and service (serverAuth) certificates identify nobody.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from photonstream.api.auth.ca import (
    CA_CERT,
    CRL,
    URN_EXPERIMENT,
    URN_GROUP,
    format_serial,
    load_certificate,
    utcnow,
)
from photonstream.api.errors import AuthenticationError

log = logging.getLogger("photonstream.api")


@dataclass(frozen=True)
class CertificateClaims:
    identity: str
    experiments: tuple[str, ...]
    groups: tuple[str, ...]
    serial: str
    not_after: dt.datetime


def claims_of(cert: x509.Certificate) -> CertificateClaims:
    """Identity (subject CN), experiments and groups (SAN URIs) of a user certificate."""
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1 or not isinstance(names[0].value, str) or not names[0].value:
        raise AuthenticationError("client certificate has no single common name to identify its holder")
    experiments: list[str] = []
    groups: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(URN_EXPERIMENT):
                experiments.append(uri.removeprefix(URN_EXPERIMENT))
            elif uri.startswith(URN_GROUP):
                groups.append(uri.removeprefix(URN_GROUP))
    return CertificateClaims(
        identity=names[0].value,
        experiments=tuple(sorted(experiments)),
        groups=tuple(sorted(groups)),
        serial=format_serial(cert.serial_number),
        not_after=cert.not_valid_after_utc,
    )


def check_user_purpose(cert: x509.Certificate) -> None:
    """A user's certificate is a leaf (BasicConstraints CA:FALSE) for client authentication (extendedKeyUsage
    clientAuth), as ``CertificateAuthority.issue_user`` makes them; anything else is refused, naming what it is.
    The CA's own certificate verifies as issued by the CA (it signs itself), hence the explicit CA:FALSE."""
    try:
        constraints: x509.BasicConstraints | None = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None:
        raise AuthenticationError("certificate has no BasicConstraints CA:FALSE; only leaf certificates identify users")
    if constraints.ca:
        raise AuthenticationError("certificate is a CA certificate (CA:TRUE), not a user's; it identifies nobody")
    try:
        usages: x509.ExtendedKeyUsage | None = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is None or ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH in usages:
            raise AuthenticationError("certificate is a service certificate (serverAuth, no clientAuth), not a user's")
        raise AuthenticationError("certificate is not for client authentication (no extendedKeyUsage clientAuth)")


class CertificateVerifier:
    """Our CA's certificate and its CRL (re-read when the file changes) in one place."""

    def __init__(self, ca_dir: str | Path) -> None:
        self.ca_dir = Path(ca_dir)
        self.ca_certificate = load_certificate(self.ca_dir / CA_CERT)
        self._crl_stamp: tuple[int, int] | None = None
        self._revoked: frozenset[int] = frozenset()
        self._crl_problem: str | None = None
        self._lock = threading.Lock()

    def _refuse_all(self, problem: str, detail: str) -> NoReturn:
        """Fail closed: no certificate is accepted while the CRL cannot be read. Logged once per problem, not per
        request."""
        self._crl_stamp = None
        if problem != self._crl_problem:
            log.error(
                "%s/%s %s (%s): every client certificate is refused until it is fixed",
                self.ca_dir,
                CRL,
                problem,
                detail,
            )
            self._crl_problem = problem
        raise AuthenticationError(f"the server's revocation list {problem}; refusing client certificates")

    def revoked_serials(self) -> frozenset[int]:
        """Serials on the CRL. A CRL that is missing, unreadable, not a CRL or not signed by our CA refuses every
        certificate (AuthenticationError): a revocation must never be lost by losing the file."""
        path = self.ca_dir / CRL
        with self._lock:
            try:
                stat = path.stat()
            except OSError as exc:
                self._refuse_all("is missing", exc.strerror or type(exc).__name__)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._crl_stamp:
                try:
                    crl = x509.load_pem_x509_crl(path.read_bytes())
                except OSError as exc:
                    self._refuse_all("is unreadable", exc.strerror or type(exc).__name__)
                except ValueError as exc:
                    self._refuse_all("is not a CRL", str(exc))
                if not crl.is_signature_valid(self.ca_certificate.public_key()):  # type: ignore[arg-type]
                    self._refuse_all("does not verify", "not signed by this CA's key")
                self._revoked = frozenset(entry.serial_number for entry in crl)
                self._crl_stamp = stamp
                if self._crl_problem is not None:
                    log.warning("%s/%s is readable again: client certificates are accepted", self.ca_dir, CRL)
                    self._crl_problem = None
            return self._revoked

    def crl_problem(self) -> str | None:
        """What is wrong with the CRL now (it is read again if it changed), or None; for the health check."""
        try:
            self.revoked_serials()
        except AuthenticationError:
            return self._crl_problem
        return None

    def last_known_revoked_serials(self) -> frozenset[int]:
        """As ``revoked_serials``, but while the CRL cannot be read the serials of the last one that could be: for
        the buffer's grants, which have no certificate to refuse (a CRL gone missing revokes nothing less)."""
        try:
            return self.revoked_serials()
        except AuthenticationError:
            return self._revoked

    def verify(self, cert: x509.Certificate, now: dt.datetime | None = None) -> CertificateClaims:
        """Claims of a user certificate our CA issued (a clientAuth leaf), valid now and not on the CRL; else
        AuthenticationError."""
        when = now or utcnow()
        try:
            cert.verify_directly_issued_by(self.ca_certificate)
        except (ValueError, TypeError, InvalidSignature):
            raise AuthenticationError("client certificate was not issued by this service's CA") from None
        if when < cert.not_valid_before_utc:
            raise AuthenticationError(f"client certificate is not valid before {cert.not_valid_before_utc.isoformat()}")
        if when > cert.not_valid_after_utc:
            raise AuthenticationError(f"client certificate expired at {cert.not_valid_after_utc.isoformat()}")
        check_user_purpose(cert)
        if cert.serial_number in self.revoked_serials():
            raise AuthenticationError(f"client certificate {format_serial(cert.serial_number)} is revoked")
        return claims_of(cert)
