"""Command-line parts of the request API, mounted by ``photonstream.cli``:

app.add_typer(ca_app, name="ca")            init | issue-user | export-p12 | issue-service | issue-token | revoke | list
app.add_typer(db_app, name="db")            upgrade | current
app.add_typer(policy_app, name="policy")    grant | role | member | show | audit

``photonstream serve`` is in ``photonstream.api.serve_cli``, ``photonstream request ...`` in
``photonstream.api.request_cli``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from photonstream.cli_support import console, friendly
from photonstream.config.environment import CA_DIR_ENV, DATABASE_ENV

DEFAULT_ISSUER = "photonstream"
DEFAULT_AUDIENCE = "photonstream-api"

CA_DIR_OPTION = typer.Option(Path("ca"), "--ca", envvar=CA_DIR_ENV, help=f"CA directory (env {CA_DIR_ENV})")


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
    p12: bool = typer.Option(False, "--p12", help="also NAME.p12 for a browser; its passphrase is printed once"),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Issue a client certificate carrying the identity, its experiments and groups."""
    from photonstream.api.auth.ca import CA_CERT, CertificateAuthority

    issued = CertificateAuthority(ca_dir).issue_user(
        name, split_names(experiments), split_names(groups), days=days, out_dir=out
    )
    console.print(
        f"serial {issued.serial}: {issued.certificate} and {issued.private_key} (until {issued.not_after:%Y-%m-%d})"
    )
    if p12:
        _export_p12(issued.certificate, issued.private_key, ca_dir / CA_CERT, issued.certificate.with_suffix(".p12"))


def _export_p12(certificate: Path, key: Path, ca_certificate: Path, out: Path, passphrase: str | None = None) -> None:
    from photonstream.api.auth.pkcs12 import export_p12

    exported = export_p12(certificate, key, ca_certificate, out, passphrase)
    console.print(f"{exported.path}: {exported.identity}'s certificate and key for a browser (mode 0600)")
    if passphrase is None:
        console.print(f"passphrase (shown once; give it separately from the file): {exported.passphrase}")


@ca_app.command("export-p12")
@friendly
def ca_export_p12(
    certificate: Path = typer.Argument(..., help="the user's certificate (NAME.crt from issue-user)"),
    key: Path | None = typer.Option(None, "--key", help="its private key [default: NAME.key beside it]"),
    out: Path | None = typer.Option(None, "--out", "-o", help="the file to write [default: NAME.p12 beside it]"),
    passphrase_env: str | None = typer.Option(
        None, "--passphrase-env", help="take the passphrase from this environment variable instead of a new one"
    ),
    ca_dir: Path = CA_DIR_OPTION,
) -> None:
    """Package a user's certificate and key as a passphrase-protected .p12 to import into a browser."""
    import os

    from photonstream.api.auth.ca import CA_CERT
    from photonstream.errors import ConfigError

    passphrase = None
    if passphrase_env is not None:
        passphrase = os.environ.get(passphrase_env)
        if not passphrase:
            raise ConfigError(f"--passphrase-env {passphrase_env}: that environment variable is not set")
    _export_p12(
        certificate,
        key or certificate.with_suffix(".key"),
        ca_dir / CA_CERT,
        out or certificate.with_suffix(".p12"),
        passphrase,
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
    lifetime: int = typer.Option(43200, min=1, help="seconds until the token expires (must outlast your streams)"),
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

    from photonstream.api.auth.ca import CertificateAuthority, utcnow

    records = CertificateAuthority(ca_dir).records()
    now = utcnow().isoformat()
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
            f"[red]revoked {r.revoked_at[:19]}[/]"
            if r.revoked_at
            else "[yellow]expired[/]"
            if r.not_after < now
            else "[green]valid[/]",
        )
    console.print(table)


# --- db ----------------------------------------------------------------------------------------------------------

db_app = typer.Typer(help="The API's database: migrations.")

DB_OPTION = typer.Option(None, "--db", envvar=DATABASE_ENV, help="SQLAlchemy URL (default: SQLite in state dir)")
STATE_OPTION = typer.Option(Path("photonstream-state"), "--state-dir", help="state directory of the API")


def _database(database: str | None, state_dir: Path) -> Any:
    from photonstream.api.settings import ApiSettings
    from photonstream.store.db import Database

    settings = ApiSettings(state_dir=state_dir, database_url=database, tokens=True)
    return Database(settings.resolved_database_url)


@db_app.command("upgrade")
@friendly
def db_upgrade(database: str | None = DB_OPTION, state_dir: Path = STATE_OPTION) -> None:
    """Apply every migration (the API also does this when it starts)."""
    db = _database(database, state_dir)
    db.upgrade()
    console.print(f"database at revision {db.current_revision()}")


@db_app.command("current")
@friendly
def db_current(database: str | None = DB_OPTION, state_dir: Path = STATE_OPTION) -> None:
    """The database's revision and the newest one this photonstream knows."""
    db = _database(database, state_dir)
    console.print(f"current {db.current_revision() or '(empty)'}, head {db.head_revision()}")


# --- policy ------------------------------------------------------------------------------------------------------

policy_app = typer.Typer(help="The authorization policy, straight in the database (also: /v1/admin endpoints).")


def _policy(database: str | None, state_dir: Path) -> Any:
    from photonstream.store.policy import PolicyStore

    db = _database(database, state_dir)
    db.upgrade()
    return PolicyStore(db)


def _audit_cli(policy: Any, action: str, obj: str, detail: str) -> None:
    import getpass

    policy.audit(f"cli:{getpass.getuser()}", action, obj, "allow", detail)


@policy_app.command("grant")
@friendly
def policy_grant(
    subject: str = typer.Argument(..., help="identity (or group with --group)"),
    experiment: str = typer.Argument(..., help="experiment, or '*' for every one"),
    group: bool = typer.Option(False, "--group", help="SUBJECT is a group"),
    remove: bool = typer.Option(False, "--remove", help="withdraw the grant instead"),
    database: str | None = DB_OPTION,
    state_dir: Path = STATE_OPTION,
) -> None:
    """Let an identity or group read an experiment."""
    policy = _policy(database, state_dir)
    kind = "group" if group else "identity"
    changed = policy.ungrant(kind, subject, experiment) if remove else policy.grant(kind, subject, experiment)
    _audit_cli(policy, "policy.ungrant" if remove else "policy.grant", f"{kind}:{subject}", f"experiment {experiment}")
    console.print(
        f"{'removed' if remove else 'granted'}: {kind} {subject} → {experiment}" + ("" if changed else " (no change)")
    )


@policy_app.command("role")
@friendly
def policy_role(
    subject: str = typer.Argument(..., help="identity (or group with --group)"),
    role: str = typer.Argument(..., help="user | operator | admin"),
    group: bool = typer.Option(False, "--group", help="SUBJECT is a group"),
    remove: bool = typer.Option(False, "--remove", help="take the role away instead"),
    database: str | None = DB_OPTION,
    state_dir: Path = STATE_OPTION,
) -> None:
    """Give an identity or group a role."""
    policy = _policy(database, state_dir)
    kind = "group" if group else "identity"
    changed = policy.unbind_role(kind, subject, role) if remove else policy.bind_role(kind, subject, role)
    _audit_cli(policy, "policy.unrole" if remove else "policy.role", f"{kind}:{subject}", f"role {role}")
    console.print(
        f"{'removed' if remove else 'bound'}: {kind} {subject} → {role}" + ("" if changed else " (no change)")
    )


@policy_app.command("member")
@friendly
def policy_member(
    group_name: str = typer.Argument(..., metavar="GROUP"),
    identity: str = typer.Argument(...),
    remove: bool = typer.Option(False, "--remove", help="remove the identity from the group"),
    database: str | None = DB_OPTION,
    state_dir: Path = STATE_OPTION,
) -> None:
    """Put an identity in a group."""
    policy = _policy(database, state_dir)
    changed = policy.remove_member(group_name, identity) if remove else policy.add_member(group_name, identity)
    _audit_cli(policy, "policy.member", f"group:{group_name}", f"{'remove' if remove else 'add'} {identity}")
    console.print(f"{identity} {'left' if remove else 'joined'} {group_name}" + ("" if changed else " (no change)"))


@policy_app.command("show")
@friendly
def policy_show(
    as_json: bool = typer.Option(False, "--json"), database: str | None = DB_OPTION, state_dir: Path = STATE_OPTION
) -> None:
    """Grants, roles and group members."""
    snapshot = _policy(database, state_dir).snapshot()
    if as_json:
        print(json.dumps(snapshot, indent=1))
        return
    for title, rows, columns in (
        ("experiment grants", snapshot["grants"], ("subject_kind", "subject", "experiment")),
        ("roles", snapshot["roles"], ("subject_kind", "subject", "role")),
        ("group members", snapshot["members"], ("group", "identity")),
    ):
        table = Table(title=title, title_justify="left")
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*(str(row[c]) for c in columns))
        console.print(table)


@policy_app.command("audit")
@friendly
def policy_audit(
    limit: int = typer.Option(50, min=1, max=10000),
    identity: str | None = typer.Option(None, help="only this identity"),
    database: str | None = DB_OPTION,
    state_dir: Path = STATE_OPTION,
) -> None:
    """The newest audit entries."""
    entries = _policy(database, state_dir).audit_entries(identity=identity, limit=limit)
    table = Table(title="audit log (newest first)", title_justify="left")
    for column in ("at", "identity", "action", "object", "outcome", "detail"):
        table.add_column(column, no_wrap=column in ("at", "action", "outcome"))
    for e in entries:
        colour = "green" if e.outcome == "allow" else "red"
        table.add_row(
            f"{e.at:%Y-%m-%d %H:%M:%S}", e.identity, e.action, e.object, f"[{colour}]{e.outcome}[/]", e.detail
        )
    console.print(table)
