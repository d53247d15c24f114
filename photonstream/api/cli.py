"""Command-line parts of the request API, mounted by ``photonstream.cli``.

ca_app        photonstream ca init|issue-user|issue-service|issue-token|revoke|list
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from photonstream.errors import ConfigError, PhotonstreamError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ISSUER = "photonstream"
DEFAULT_AUDIENCE = "photonstream-api"

CA_DIR_OPTION = typer.Option(
    Path("ca"), "--ca", envvar="PHOTONSTREAM_CA_DIR", help="CA directory (env PHOTONSTREAM_CA_DIR)"
)


def friendly(fn: F) -> F:
    """Photonstream errors become one red line and exit status 2 (bad input) or 1 (anything else)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PhotonstreamError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def split_names(values: list[str] | None) -> list[str]:
    """``-e a,b -e c`` → ``[a, b, c]``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# --- ca ----------------------------------------------------------------------------------------------------------

ca_app = typer.Typer(help="Our certificate authority: user and service certificates, tokens, revocation.")


@ca_app.command("init")
@friendly
def ca_init(
    directory: Path = typer.Argument(..., help="directory to create the CA in"),
    name: str = typer.Option("photonstream CA", help="the CA's common name"),
    days: int = typer.Option(3650, min=1, help="validity of the CA certificate"),
    force: bool = typer.Option(False, "--force", help="replace an existing CA (every issued certificate dies)"),
) -> None:
    """Create a CA directory: CA key and certificate, token-signing key, empty index and CRL."""
    from photonstream.api.auth.ca import CertificateAuthority

    ca = CertificateAuthority.init(directory, common_name=name, days=days, force=force)
    console.print(f"CA '{name}' in {ca.directory} (valid until {ca.certificate.not_valid_after_utc:%Y-%m-%d})")


@ca_app.command("issue-user")
@friendly
def ca_issue_user(
    name: str = typer.Argument(..., help="the identity (certificate common name)"),
    experiments: list[str] = typer.Option(None, "--experiments", "-e", help="experiments granted (a,b or repeated)"),
    groups: list[str] = typer.Option(None, "--groups", "-g", help="groups (a,b or repeated)"),
    days: int = typer.Option(30, min=1, help="validity in days"),
    out: Path = typer.Option(Path("."), "--out", "-o", help="where NAME.crt and NAME.key go"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Issue a client certificate carrying the identity, its experiments and groups."""
    from photonstream.api.auth.ca import CertificateAuthority

    issued = CertificateAuthority(ca_dir).issue_user(
        name, split_names(experiments), split_names(groups), days=days, out_dir=out
    )
    console.print(
        f"serial {issued.serial}: {issued.certificate} and {issued.private_key} (until {issued.not_after:%Y-%m-%d})"
    )


@ca_app.command("issue-service")
@friendly
def ca_issue_service(
    name: str = typer.Argument(..., help="service name (certificate common name)"),
    hosts: list[str] = typer.Option(None, "--host", help="extra DNS name or IP (localhost/127.0.0.1/::1 always)"),
    days: int = typer.Option(365, min=1, help="validity in days"),
    out: Path = typer.Option(Path("."), "--out", "-o", help="where NAME.crt and NAME.key go"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Issue a server certificate (serverAuth) for the API."""
    from photonstream.api.auth.ca import CertificateAuthority

    issued = CertificateAuthority(ca_dir).issue_service(name, split_names(hosts), days=days, out_dir=out)
    console.print(
        f"serial {issued.serial}: {issued.certificate} and {issued.private_key} (until {issued.not_after:%Y-%m-%d})"
    )


@ca_app.command("issue-token")
@friendly
def ca_issue_token(
    name: str = typer.Argument(..., help="the identity (token subject)"),
    experiments: list[str] = typer.Option(None, "--experiments", "-e", help="experiments granted (a,b or repeated)"),
    groups: list[str] = typer.Option(None, "--groups", "-g", help="groups (a,b or repeated)"),
    lifetime: int = typer.Option(3600, min=1, help="seconds until the token expires"),
    issuer: str = typer.Option(DEFAULT_ISSUER, help="issuer (iss); the server's token issuer setting"),
    audience: str = typer.Option(DEFAULT_AUDIENCE, help="audience (aud); the server's token audience setting"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Print a bearer token (ES256 JWT) signed with the CA directory's token key."""
    from photonstream.api.auth.ca import CertificateAuthority
    from photonstream.api.auth.tokens import issue_token

    token = issue_token(
        CertificateAuthority(ca_dir),
        name,
        issuer=issuer,
        audience=audience,
        lifetime_s=lifetime,
        experiments=split_names(experiments),
        groups=split_names(groups),
    )
    print(token)


@ca_app.command("revoke")
@friendly
def ca_revoke(
    serial: str = typer.Argument(..., help="serial number (hexadecimal, as 'ca list' shows it)"),
    reason: str = typer.Option("", help="why (kept in the index)"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Revoke a certificate: the CRL is re-signed and servers refuse it from their next request."""
    from photonstream.api.auth.ca import CertificateAuthority

    record = CertificateAuthority(ca_dir).revoke(serial, reason)
    console.print(f"revoked {record.kind} certificate {record.serial} ({record.name})")


@ca_app.command("list")
@friendly
def ca_list(
    as_json: bool = typer.Option(False, "--json", help="machine-readable"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Every certificate this CA issued, with its state."""
    from dataclasses import asdict

    from photonstream.api.auth.ca import CertificateAuthority

    records = CertificateAuthority(ca_dir).records()
    if as_json:
        print(json.dumps([asdict(r) for r in records], indent=1))
        return
    table = Table(title=f"certificates issued by {ca_dir}", title_justify="left")
    for column in ("serial", "kind", "name", "experiments / hosts", "groups", "valid until", "state"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.serial,
            r.kind,
            r.name,
            ", ".join(r.experiments or r.hosts),
            ", ".join(r.groups),
            r.not_after[:19],
            f"[red]revoked {r.revoked_at[:19]}[/]" if r.revoked_at else "[green]valid[/]",
        )
    console.print(table)
