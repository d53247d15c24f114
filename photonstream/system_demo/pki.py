"""The demo's credentials: a fresh CA, the API's service certificate, and a user (certificate and token)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from photonstream.api.cli import DEFAULT_AUDIENCE, DEFAULT_ISSUER

TOKEN_LIFETIME_S = 12 * 3600


@dataclass(frozen=True)
class DemoPki:
    ca_dir: Path
    ca_certificate: Path
    service: tuple[Path, Path]  # certificate, key
    user: str
    user_certificate: tuple[Path, Path]
    user_token: Path  # a bearer token for the dashboard's login page


def make_pki(root: Path, user: str, experiment: str) -> DemoPki:
    """A CA under ``root``/ca, ``root``/service/api.{crt,key}, and ``user`` granted ``experiment``."""
    from photonstream.api.auth.ca import CertificateAuthority
    from photonstream.api.auth.tokens import issue_token

    ca = CertificateAuthority.init(root / "ca", common_name="photonstream demo CA", days=2)
    service = ca.issue_service("api", days=2, out_dir=root / "service")
    issued = ca.issue_user(user, [experiment], days=2, out_dir=root / "users")
    token = issue_token(
        ca,
        user,
        issuer=DEFAULT_ISSUER,
        audience=DEFAULT_AUDIENCE,
        lifetime_s=TOKEN_LIFETIME_S,
        experiments=[experiment],
    )
    token_path = root / "users" / f"{user}.token"
    token_path.write_text(token + "\n")
    os.chmod(token_path, 0o600)
    return DemoPki(
        ca_dir=ca.directory,
        ca_certificate=ca.directory / "ca.crt",
        service=(service.certificate, service.private_key),
        user=user,
        user_certificate=(issued.certificate, issued.private_key),
        user_token=token_path,
    )
