"""Command-line parts of the request API, mounted by ``photonstream.cli``:

app.add_typer(ca_app, name="ca")            init | issue-user | issue-service | issue-token | revoke | list
app.add_typer(request_app, name="request")  create | list | show | cancel | logs | watch
app.add_typer(db_app, name="db")            upgrade | current
app.add_typer(policy_app, name="policy")    grant | role | member | show | audit
app.command("serve")(serve_command)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from photonstream.cli_support import console, err_console, friendly
from photonstream.errors import ConfigError

DEFAULT_ISSUER = "photonstream"
DEFAULT_AUDIENCE = "photonstream-api"

CA_DIR_OPTION = typer.Option(
    Path("ca"), "--ca", envvar="PHOTONSTREAM_CA_DIR", help="CA directory (env PHOTONSTREAM_CA_DIR)"
)


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


# --- serve -------------------------------------------------------------------------------------------------------


@friendly
def serve_command(
    config: Path | None = typer.Option(None, "--config", help="settings YAML (options below override it)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8443, help="port"),
    cert: Path | None = typer.Option(None, "--cert", help="the service's certificate ('ca issue-service')"),
    key: Path | None = typer.Option(None, "--key", help="the service's private key"),
    ca_dir: Path | None = typer.Option(None, "--ca", envvar="PHOTONSTREAM_CA_DIR", help="CA directory"),
    mtls: bool = typer.Option(False, "--mtls", help="require a client certificate from our CA on every connection"),
    mtls_optional: bool = typer.Option(False, "--mtls-optional", help="accept, not require, client certificates"),
    tokens: bool | None = typer.Option(None, "--tokens/--no-tokens", help="accept bearer tokens (default: yes)"),
    oidc_jwks: str | None = typer.Option(None, "--oidc-jwks", help="JWKS URL of an external OIDC issuer"),
    oidc_issuer: str | None = typer.Option(None, "--oidc-issuer", help="its iss"),
    oidc_audience: str | None = typer.Option(None, "--oidc-audience", help="aud its tokens carry for us"),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="database, job state, stream workdirs"),
    database: str | None = typer.Option(None, "--db", envvar="PHOTONSTREAM_DB", help="SQLAlchemy database URL"),
    admins: list[str] = typer.Option(None, "--admin", help="identity with the admin role (repeatable)"),
    job_backend: str | None = typer.Option(None, "--job-backend", help="local | slurm | sfapi"),
    buffer: str | None = typer.Option(None, "--buffer", help="the buffer service's endpoint"),
    advertise_buffer: str | None = typer.Option(
        None, "--advertise-buffer", help="the buffer's endpoint as consumers reach it, if not --buffer's (a gateway)"
    ),
    data_root: str | None = typer.Option(
        None, "--data-root", help="experiment data directory, e.g. /data/{experiment}"
    ),
    insecure_http: bool = typer.Option(False, "--insecure-http", help="plain HTTP (tokens only; development only)"),
    report_url: str | None = typer.Option(
        None, "--report-url", help="URL jobs send progress reports to (default: this server, on loopback)"
    ),
) -> None:
    """Serve the request API over HTTPS (mutual TLS and/or bearer tokens) with an embedded buffer (or --buffer)."""
    import uvicorn

    from photonstream.api.app import create_app
    from photonstream.api.server import INSECURE_WARNING, server_config
    from photonstream.api.settings import load_settings

    if mtls and mtls_optional:
        raise ConfigError("--mtls and --mtls-optional: choose one")
    certificates = "required" if mtls else "optional" if mtls_optional else None
    if certificates is None and config is None:
        certificates = "off" if insecure_http or ca_dir is None else "optional"
    overrides: dict[str, Any] = {
        "client_certificates": certificates,
        "tokens": tokens,
        "ca_dir": ca_dir,
        "oidc_jwks_url": oidc_jwks,
        "oidc_issuer": oidc_issuer,
        "oidc_audience": oidc_audience,
        "state_dir": state_dir,
        "database_url": database,
        "admins": split_names(admins) or None,
        "buffer_endpoint": buffer,
        "buffer_advertised_endpoint": advertise_buffer,
        "data_root": data_root,
    }
    if job_backend:
        overrides.update(job_backend=job_backend, job_backends=[job_backend])
    settings = load_settings(config, **overrides)
    if report_url or settings.report_url is None:
        reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        settings.report_url = report_url or f"{'http' if insecure_http else 'https'}://{reachable}:{port}"
    app = create_app(settings)
    server = server_config(app, settings, host=host, port=port, certfile=cert, keyfile=key, insecure_http=insecure_http)
    if insecure_http:
        err_console.print(f"[bold red]WARNING: {INSECURE_WARNING}[/]")
    scheme = "http" if insecure_http else "https"
    err_console.print(
        f"photonstream API on {scheme}://{host}:{port} (auth: {', '.join(settings.auth_modes)}; "
        f"database: {settings.resolved_database_url.split('@')[-1]})"
    )
    uvicorn.Server(server).run()


# --- db ----------------------------------------------------------------------------------------------------------

db_app = typer.Typer(help="The API's database: migrations.")

DB_OPTION = typer.Option(None, "--db", envvar="PHOTONSTREAM_DB", help="SQLAlchemy URL (default: SQLite in state dir)")
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


# --- request (the client) ----------------------------------------------------------------------------------------

request_app = typer.Typer(help="Request, follow and cancel streams through the API (certificate or token).")

STATE_COLOURS = {
    "queued": "yellow",
    "starting": "cyan",
    "streaming": "blue",
    "completed": "green",
    "failed": "red",
    "cancelled": "magenta",
}


@request_app.callback()
def request_options(
    ctx: typer.Context,
    url: str | None = typer.Option(None, "--url", envvar="PHOTONSTREAM_URL", help="the API, e.g. https://host:8443"),
    cert: Path | None = typer.Option(None, "--cert", envvar="PHOTONSTREAM_CERT", help="your client certificate"),
    key: Path | None = typer.Option(None, "--key", envvar="PHOTONSTREAM_KEY", help="its private key"),
    ca: Path | None = typer.Option(None, "--ca-cert", envvar="PHOTONSTREAM_CA", help="CA certificate to trust"),
    token: str | None = typer.Option(None, "--token", envvar="PHOTONSTREAM_TOKEN", help="bearer token"),
) -> None:
    ctx.obj = {"url": url, "cert": cert, "key": key, "ca": ca, "token": token}


def _client(ctx: typer.Context) -> Any:
    from photonstream.client.api import PhotonstreamClient

    factory = (ctx.obj or {}).get("client_factory")  # tests hand in a client on an in-process app
    if factory is not None:
        return factory()
    return PhotonstreamClient(**{k: v for k, v in (ctx.obj or {}).items() if k != "client_factory"})


def _state(state: str) -> str:
    return f"[{STATE_COLOURS.get(state, 'white')}]{state}[/]"


def _read_yaml(path: Path, what: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the {what} ({exc})") from None


def _write_private_json(path: Path, data: Any) -> None:
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)


@request_app.command("create")
@friendly
def request_create(
    ctx: typer.Context,
    request_file: Path | None = typer.Argument(None, help="a whole request as YAML (or use the options)"),
    experiment: str | None = typer.Option(None, "--experiment", "-x", help="experiment"),
    runs: list[int] = typer.Option(None, "--run", "-r", help="run number (repeatable)"),
    detectors: list[str] = typer.Option(None, "--detector", "-d", help="detector (repeatable)"),
    pipeline: Path | None = typer.Option(None, "--pipeline", "-p", help="pipeline YAML (source, steps, serializer)"),
    consumers: list[str] = typer.Option(None, "--consumer", "-c", help="NAME[:POLICY], e.g. indexers:lossless"),
    backend: str | None = typer.Option(None, "--backend", help="job backend (default: the service's)"),
    time_limit: int | None = typer.Option(None, "--time-limit", min=1, help="job time limit in seconds"),
    save: Path | None = typer.Option(None, "--save", help="write the data endpoint and CURVE keys here (mode 0600)"),
    as_json: bool = typer.Option(False, "--json", help="print the whole answer as JSON"),
) -> None:
    """Request a stream; prints its id, state and where consumers connect."""
    body: dict[str, Any] = {}
    if request_file is not None:
        loaded = _read_yaml(request_file, "request")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{request_file}: a request must be a mapping")
        body.update(loaded)
    if pipeline is not None:
        spec = _read_yaml(pipeline, "pipeline")
        if not isinstance(spec, dict):
            raise ConfigError(f"{pipeline}: a pipeline must be a mapping")
        dropped = [k for k in ("stream", "handlers", "progress_every") if k in spec]
        if dropped:
            err_console.print(f"[yellow]note:[/] the service sets {', '.join(dropped)}; ignoring them from {pipeline}")
        body["pipeline"] = {k: v for k, v in spec.items() if k not in dropped}
    if experiment:
        body["experiment"] = experiment
    if runs:
        body["runs"] = list(runs)
    if detectors:
        body["detectors"] = split_names(detectors)
    if consumers:
        body["consumers"] = [
            {"name": name, "policy": policy or "lossless"}
            for name, _, policy in (c.partition(":") for c in split_names(consumers))
        ]
    if backend:
        body["job_backend"] = backend
    if time_limit is not None:
        body["resources"] = {**body.get("resources", {}), "time_limit_s": time_limit}
    for needed in ("experiment", "runs", "pipeline"):
        if needed not in body:
            raise ConfigError(f"{needed}: missing (give a request file or --experiment, --run and --pipeline)")
    with _client(ctx) as api:
        stream = api.create_stream(body)
    answer = stream.model_dump(mode="json")
    if save is not None:
        _write_private_json(save, {"stream_id": answer["id"], **answer["data_endpoint"]})
    if as_json:
        print(json.dumps(answer, indent=1))
        return
    endpoint = stream.data_endpoint
    console.print(f"stream [bold]{stream.id}[/] {_state(stream.state)} ({stream.experiment}, runs {stream.runs})")
    console.print(f"buffer {endpoint.address}, streams {', '.join(endpoint.streams)}")
    console.print(f"consumer groups: {', '.join(f'{g.name} ({g.policy})' for g in endpoint.consumer_groups)}")
    console.print(f"CURVE public key {endpoint.curve.client_public_key}")
    if save is None:
        console.print(f"CURVE secret key {endpoint.curve.client_secret_key}  [yellow](shown once; use --save)[/]")
    else:
        console.print(f"CURVE keys saved to {save}")


@request_app.command("list")
@friendly
def request_list(
    ctx: typer.Context,
    state: list[str] = typer.Option(None, "--state", "-s", help="only these states (repeatable)"),
    experiment: str | None = typer.Option(None, "--experiment", "-x"),
    owner: str | None = typer.Option(None, "--owner", help="operators: another owner's streams"),
    limit: int = typer.Option(50, min=1, max=500),
    offset: int = typer.Option(0, min=0),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Your streams (operators: anyone's), newest first."""
    with _client(ctx) as api:
        page = api.list_streams(
            state=split_names(state), experiment=experiment, owner=owner, offset=offset, limit=limit
        )
    if as_json:
        print(page.model_dump_json(indent=1))
        return
    table = Table(title=f"streams {offset + 1}-{offset + len(page.items)} of {page.total}", title_justify="left")
    table.add_column("id", no_wrap=True, min_width=36)  # whole ids: they are what show/cancel take
    for column in ("owner", "experiment", "runs", "state", "created", "reason"):
        table.add_column(column)
    for s in page.items:
        runs_text = ",".join(map(str, s.runs))
        table.add_row(
            str(s.id),
            s.owner,
            s.experiment,
            runs_text,
            _state(s.state),
            f"{s.created_at:%Y-%m-%d %H:%M}",
            s.reason[:60],
        )
    console.print(table)


@request_app.command("show")
@friendly
def request_show(
    ctx: typer.Context, stream_id: str = typer.Argument(...), as_json: bool = typer.Option(False, "--json")
) -> None:
    """One stream: state, timestamps, job, data endpoint, history."""
    with _client(ctx) as api:
        stream = api.get_stream(stream_id)
        history = api.transitions(stream_id)
    if as_json:
        print(stream.model_dump_json(indent=1))
        return
    table = Table(title=f"stream {stream.id}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    for name, value in [
        ("owner", stream.owner),
        ("experiment / runs", f"{stream.experiment} / {', '.join(map(str, stream.runs))}"),
        ("state", _state(stream.state)),
        ("reason", stream.reason),
        ("job", f"{stream.job_backend} {stream.job_id or '(not submitted)'}"),
        ("buffer", f"{stream.data_endpoint.address} {' '.join(stream.data_endpoint.streams)}"),
        ("credential expires", str(stream.credential_expires_at or "-")),
        ("estimated end", str(stream.estimated_end_at)),
    ]:
        table.add_row(name, value)
    console.print(table)
    for t in history:
        console.print(f"  {t.at:%H:%M:%S} {t.from_state or '-'} → {_state(t.to_state)} {t.reason}")


@request_app.command("cancel")
@friendly
def request_cancel(ctx: typer.Context, stream_id: str = typer.Argument(...)) -> None:
    """Cancel a stream (its job is stopped)."""
    with _client(ctx) as api:
        stream = api.cancel_stream(stream_id)
    console.print(f"stream {stream.id} {_state(stream.state)}")


@request_app.command("logs")
@friendly
def request_logs(
    ctx: typer.Context,
    stream_id: str = typer.Argument(...),
    tail: int | None = typer.Option(None, "--tail", "-n", min=1, help="last N lines"),
    head: int | None = typer.Option(None, "--head", min=1, help="first N lines"),
    max_bytes: int = typer.Option(65536, "--max-bytes", min=1, help="at most this many bytes"),
) -> None:
    """What the stream's job printed."""
    with _client(ctx) as api:
        logs = api.logs(stream_id, tail=tail, head=head, max_bytes=max_bytes)
    print(logs.text, end="" if logs.text.endswith("\n") or not logs.text else "\n")


@request_app.command("watch")
@friendly
def request_watch(ctx: typer.Context, stream_id: str = typer.Argument(...)) -> None:
    """Follow a stream until it ends; exit status 0 when it completed, 1 otherwise."""
    from rich.live import Live
    from rich.spinner import Spinner

    with _client(ctx) as api:
        stream = api.get_stream(stream_id)
        lines: list[str] = []
        spinner = Spinner("dots", text=f"{stream.id}: {_state(stream.state)}")
        final = stream.state
        with Live(spinner, console=err_console, transient=True, refresh_per_second=8):
            for event in api.events(stream_id):
                if event.event == "state":
                    data = event.data
                    line = f"{data['at'][11:19]} {data['from'] or '-'} → {_state(data['to'])} {data['reason']}"
                    lines.append(line)
                    console.print(line)
                    spinner.update(text=f"{stream.id}: {_state(data['to'])}")
                elif event.event == "end":
                    final = event.data["state"]
    console.print(f"stream {stream_id} ended {_state(final)}")
    if final != "completed":
        raise typer.Exit(1)
