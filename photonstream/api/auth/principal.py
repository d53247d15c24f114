"""Who is calling: credentials (client certificate, bearer token) turned into a principal with grants and roles.

Identity, groups and experiments come from the credential (certificate CN and SAN URIs, token claims) and from the
policy tables (memberships, grants, role bindings); the effective sets are their union. Revocation is checked on
every request: the CA's CRL (re-read when it changes) and the ``revoked_credentials`` table.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from photonstream.api.auth.certificates import CertificateClaims, CertificateVerifier
from photonstream.api.auth.tokens import TokenClaims, TokenVerifier
from photonstream.api.errors import AuthenticationError, PermissionDeniedError
from photonstream.store.policy import ALL_EXPERIMENTS, PolicyStore


@dataclass(frozen=True)
class Principal:
    identity: str
    groups: frozenset[str]
    experiments: frozenset[str]
    roles: frozenset[str]
    credential: str  # certificate | token | certificate+token
    credential_id: str
    expires_at: dt.datetime | None

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles

    @property
    def is_operator(self) -> bool:
        return "operator" in self.roles or self.is_admin

    def may_read(self, experiment: str) -> bool:
        return ALL_EXPERIMENTS in self.experiments or experiment in self.experiments

    def may_see_stream(self, owner: str) -> bool:
        return owner == self.identity or self.is_operator


def client_certificate(scope: dict[str, Any]) -> x509.Certificate | None:
    """The leaf of the ASGI TLS extension's ``client_cert_chain`` (PEM), if the server passed one."""
    tls = (scope.get("extensions") or {}).get("tls") or {}
    chain = tls.get("client_cert_chain") or []
    if not chain:
        return None
    leaf = chain[0]
    try:
        return x509.load_pem_x509_certificate(leaf.encode() if isinstance(leaf, str) else leaf)
    except ValueError:
        raise AuthenticationError("client certificate is not readable") from None


class Authenticator:
    def __init__(
        self,
        *,
        certificates_mode: str,
        accept_tokens: bool,
        certificates: CertificateVerifier | None,
        tokens: TokenVerifier | None,
        policy: PolicyStore,
        admins: set[str],
    ) -> None:
        self.certificates_mode = certificates_mode  # off | optional | required
        self.accept_tokens = accept_tokens
        self.certificates = certificates
        self.tokens = tokens
        self.policy = policy
        self.admins = admins

    def _from_certificate(self, cert: x509.Certificate) -> CertificateClaims:
        if self.certificates is None:
            raise AuthenticationError("this server has no CA to check client certificates against")
        claims = self.certificates.verify(cert)
        if self.policy.is_revoked("certificate", claims.serial):
            raise AuthenticationError(f"client certificate {claims.serial} is revoked")
        return claims

    def _from_token(self, authorization: str) -> TokenClaims:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthenticationError("Authorization header must be 'Bearer <token>'")
        if self.tokens is None:
            raise AuthenticationError("this server accepts no bearer tokens (no issuer configured)")
        claims = self.tokens.verify(value.strip())
        if claims.token_id and self.policy.is_revoked("token", claims.token_id):
            raise AuthenticationError("token is revoked")
        return claims

    def authenticate(self, scope: dict[str, Any], authorization: str | None) -> Principal:
        cert_claims: CertificateClaims | None = None
        token_claims: TokenClaims | None = None
        if self.certificates_mode != "off":
            cert = client_certificate(scope)
            if cert is not None:
                cert_claims = self._from_certificate(cert)
            elif self.certificates_mode == "required":
                raise AuthenticationError("no client certificate: this service requires one (mutual TLS)")
        if authorization:
            if not self.accept_tokens:
                raise AuthenticationError("bearer tokens are not accepted here; present a client certificate")
            token_claims = self._from_token(authorization)
        if cert_claims is None and token_claims is None:
            wanted = "a client certificate or a bearer token" if self.certificates_mode != "off" else "a bearer token"
            raise AuthenticationError(f"no credential: present {wanted}")
        if cert_claims and token_claims and cert_claims.identity != token_claims.identity:
            raise AuthenticationError("client certificate and bearer token name different identities")
        identity = (cert_claims or token_claims).identity  # type: ignore[union-attr]
        if not self.policy.seen(identity):
            raise PermissionDeniedError(f"identity {identity!r} is disabled")
        groups = set(self.policy.groups_of(identity))
        experiments: set[str] = set()
        expiries = []
        kinds, ids = [], []
        for claims in (cert_claims, token_claims):
            if claims is None:
                continue
            groups.update(claims.groups)
            experiments.update(claims.experiments)
        if cert_claims:
            kinds.append("certificate")
            ids.append(cert_claims.serial)
            expiries.append(cert_claims.not_after)
        if token_claims:
            kinds.append("token")
            ids.append(token_claims.token_id)
            expiries.append(token_claims.expires_at)
        experiments.update(self.policy.experiments_of(identity, groups))
        roles = {"user"} | self.policy.roles_of(identity, groups)
        if identity in self.admins:
            roles.add("admin")
        return Principal(
            identity=identity,
            groups=frozenset(groups),
            experiments=frozenset(experiments),
            roles=frozenset(roles),
            credential="+".join(kinds),
            credential_id="+".join(ids),
            expires_at=min(expiries),
        )
