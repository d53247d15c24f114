"""Bearer tokens: JWTs from our own issuer (ES256, key in the CA directory) or from an external OIDC issuer (JWKS).

Claims we read
    sub          the identity (an external issuer may name another claim: ``identity_claim``)
    groups       list of group names
    experiments  list of experiments (honoured from our own issuer only; an external issuer grants through groups)
    aud, iss     must match the configured audience and a trusted issuer
    exp, iat     required; ``exp`` bounds the streams this token may create (see the token-lifetime rule)
    jti          token id, revocable like a certificate serial
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from photonstream.api.auth.ca import TOKEN_JWKS, CertificateAuthority, check_identity, check_names, utcnow
from photonstream.api.errors import AuthenticationError
from photonstream.errors import ConfigError

log = logging.getLogger("photonstream.api")

OWN_ALGORITHMS = ("ES256",)
OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA")
LEEWAY_S = 30


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of an EC public JWK: the key id we publish."""
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode()).digest())


def jwks_of(public_key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(public_key, as_dict=True)
    jwk.update(kid=jwk_thumbprint(jwk), alg="ES256", use="sig")
    return {"keys": [jwk]}


def issue_token(
    ca: CertificateAuthority,
    identity: str,
    *,
    issuer: str,
    audience: str,
    lifetime_s: int = 3600,
    experiments: Sequence[str] = (),
    groups: Sequence[str] = (),
    now: dt.datetime | None = None,
) -> str:
    """A signed ES256 JWT for ``identity`` from the CA directory's token key."""
    check_identity(identity)
    if lifetime_s < 1:
        raise ConfigError(f"lifetime: must be at least 1 s (got {lifetime_s})")
    key = ca.token_key()
    issued = now or utcnow()
    claims = {
        "iss": issuer,
        "aud": audience,
        "sub": identity,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()) - 5,
        "exp": int(issued.timestamp()) + lifetime_s,
        "jti": uuid.uuid4().hex,
        "groups": list(check_names("group", groups)),
        "experiments": list(check_names("experiment", experiments)),
    }
    kid = jwks_of(key.public_key())["keys"][0]["kid"]
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


@dataclass(frozen=True)
class TokenClaims:
    identity: str
    groups: tuple[str, ...]
    experiments: tuple[str, ...]
    expires_at: dt.datetime
    token_id: str
    issuer: str


def _string_list(claims: dict[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name, [])
    if isinstance(value, str):
        value = value.split()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthenticationError(f"token claim {name!r} must be a list of strings")
    return tuple(v for v in value if v)


class OwnIssuerKeys:
    """Our issuer's public keys, read from ``token.jwks.json`` again whenever the file changes."""

    def __init__(self, ca_dir: Path) -> None:
        self.path = Path(ca_dir) / TOKEN_JWKS
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Any] = {}
        self._broken_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()

    def _read(self, stamp: tuple[int, int]) -> dict[str, Any]:
        """The keys of the file; a file that is not a JWKS refuses our tokens (401, logged once per version of it)."""
        try:
            data = json.loads(self.path.read_text())
            return {k.get("kid"): jwt.PyJWK(k).key for k in data.get("keys", [])}
        except (OSError, ValueError, RecursionError, AttributeError, TypeError, jwt.PyJWTError) as exc:
            if stamp != self._broken_stamp:
                log.error("%s is not a readable JWKS (%s): tokens of our own issuer are refused", self.path, exc)
                self._broken_stamp = stamp
            raise AuthenticationError("this server's token keys are unreadable; refusing its own tokens") from None

    def key(self, kid: str | None) -> Any:
        with self._lock:
            try:
                stat = self.path.stat()
            except OSError:
                raise AuthenticationError("this server has no token keys for its own issuer") from None
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._keys = self._read(stamp)
                self._stamp = stamp
            if kid in self._keys:
                return self._keys[kid]
            if kid is None and len(self._keys) == 1:
                return next(iter(self._keys.values()))
        raise AuthenticationError("token signature is not valid (unknown key id)")


class TokenVerifier:
    """Checks bearer tokens from our own issuer and/or one external OIDC issuer."""

    def __init__(
        self,
        *,
        own_keys: OwnIssuerKeys | None,
        own_issuer: str,
        audience: str,
        oidc_jwks_url: str | None = None,
        oidc_issuer: str | None = None,
        oidc_audience: str | None = None,
        oidc_identity_claim: str = "sub",
    ) -> None:
        self.own_keys = own_keys
        self.own_issuer = own_issuer
        self.audience = audience
        self.oidc_issuer = oidc_issuer
        self.oidc_audience = oidc_audience or audience
        self.oidc_identity_claim = oidc_identity_claim
        self._jwks = jwt.PyJWKClient(oidc_jwks_url, cache_keys=True, lifespan=300) if oidc_jwks_url else None

    def verify(self, token: str) -> TokenClaims:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("bearer token is not a well-formed JWT") from None
        issuer = unverified.get("iss")
        if self.own_keys is not None and issuer == self.own_issuer:
            key = self.own_keys.key(header.get("kid"))
            claims = self._decode(token, key, OWN_ALGORITHMS, self.own_issuer, self.audience)
            experiments = _string_list(claims, "experiments")
            identity_claim = "sub"
        elif self._jwks is not None and issuer == self.oidc_issuer:
            try:
                key = self._jwks.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                raise AuthenticationError("the OIDC issuer's keys cannot be fetched right now") from None
            except jwt.PyJWTError:
                raise AuthenticationError("token signature is not valid (unknown key id)") from None
            claims = self._decode(token, key, OIDC_ALGORITHMS, self.oidc_issuer, self.oidc_audience)
            experiments = ()
            identity_claim = self.oidc_identity_claim
        else:
            raise AuthenticationError(f"token issuer {issuer!r} is not trusted here")
        identity = claims.get(identity_claim)
        if not isinstance(identity, str):
            raise AuthenticationError(f"token has no {identity_claim!r} claim naming the identity")
        try:
            check_identity(identity)
        except ConfigError:
            raise AuthenticationError(f"token identity {identity!r} is not a valid identity name") from None
        return TokenClaims(
            identity=identity,
            groups=_string_list(claims, "groups"),
            experiments=experiments,
            expires_at=dt.datetime.fromtimestamp(claims["exp"], dt.UTC),
            token_id=str(claims.get("jti") or ""),
            issuer=issuer,
        )

    @staticmethod
    def _decode(token: str, key: Any, algorithms: Sequence[str], issuer: str | None, audience: str) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(f"token audience is not {audience!r}") from None
        except jwt.InvalidSignatureError:
            raise AuthenticationError("token signature is not valid") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationError(f"token signature algorithm is not one of {', '.join(algorithms)}") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"token refused: {exc}") from None
