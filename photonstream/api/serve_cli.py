"""``photonstream serve``: the request API over HTTPS with its embedded (or an external) buffer.

Before anything starts, every port it would listen on (the API's, the embedded buffer's two) is tried, and an
external buffer (``buffer_endpoint`` or ``--buffer`` given without ``buffer: embedded``) must be listening: each
failure is one line naming the option that changes it. A failure while the app starts (its lifespan) is one line
too, instead of uvicorn's traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from photonstream.api.cli import split_names
from photonstream.api.serve_checks import (
    StartupErrors,
    check_can_listen,
    check_external_buffer,
    wait_for_previous_buffer,
    without_token_listener,
)
from photonstream.cli_support import err_console, friendly
from photonstream.config.environment import CA_DIR_ENV, DATABASE_ENV
from photonstream.errors import ConfigError, PhotonstreamError

NO_LISTENER = ("none", "off", "")


@friendly
def serve_command(
    config: Path | None = typer.Option(None, "--config", help="settings YAML (options below override it)"),
    host: str = typer.Option("127.0.0.1", help="interface to listen on"),
    port: int = typer.Option(8443, help="port"),
    cert: Path | None = typer.Option(None, "--cert", help="the service's certificate ('ca issue-service')"),
    key: Path | None = typer.Option(None, "--key", help="the service's private key"),
    ca_dir: Path | None = typer.Option(None, "--ca", envvar=CA_DIR_ENV, help="CA directory"),
    mtls: bool = typer.Option(False, "--mtls", help="require a client certificate from our CA on every connection"),
    mtls_optional: bool = typer.Option(False, "--mtls-optional", help="accept, not require, client certificates"),
    tokens: bool | None = typer.Option(None, "--tokens/--no-tokens", help="accept bearer tokens (default: yes)"),
    oidc_jwks: str | None = typer.Option(None, "--oidc-jwks", help="JWKS URL of an external OIDC issuer"),
    oidc_issuer: str | None = typer.Option(None, "--oidc-issuer", help="its iss"),
    oidc_audience: str | None = typer.Option(None, "--oidc-audience", help="aud its tokens carry for us"),
    state_dir: Path | None = typer.Option(None, "--state-dir", help="database, job state, stream workdirs"),
    database: str | None = typer.Option(None, "--db", envvar=DATABASE_ENV, help="SQLAlchemy database URL"),
    admins: list[str] = typer.Option(None, "--admin", help="identity with the admin role (repeatable)"),
    job_backend: str | None = typer.Option(None, "--job-backend", help="local | slurm | sfapi"),
    buffer: str | None = typer.Option(
        None, "--buffer", help="an external buffer's endpoint ('photonstream buffer serve'): none is started here"
    ),
    buffer_bind: str | None = typer.Option(
        None, "--buffer-bind", help="embedded buffer: its main (CURVE) listener [default tcp://127.0.0.1:5600]"
    ),
    buffer_token_bind: str | None = typer.Option(
        None,
        "--buffer-token-bind",
        help="embedded buffer: its token listener [default tcp://127.0.0.1:5601]; 'none': no token listener",
    ),
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
        "buffer_bind": buffer_bind,
        "buffer_token_bind": None if buffer_token_bind in NO_LISTENER else buffer_token_bind,
        "buffer_advertised_endpoint": advertise_buffer,
        "data_root": data_root,
    }
    if job_backend:
        overrides.update(job_backend=job_backend, job_backends=[job_backend])
    if buffer and (buffer_bind or buffer_token_bind is not None):
        raise ConfigError("--buffer (an external buffer) and --buffer-bind/--buffer-token-bind (the embedded one's)")
    if buffer_bind or buffer_token_bind is not None:
        overrides["buffer"] = "embedded"
    settings = load_settings(config, **overrides)
    if buffer_token_bind in NO_LISTENER:
        settings = without_token_listener(settings)
    if report_url or settings.report_url is None:
        reachable = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        settings.report_url = report_url or f"{'http' if insecure_http else 'https'}://{reachable}:{port}"
    app = StartupErrors(create_app(settings))
    server = server_config(app, settings, host=host, port=port, certfile=cert, keyfile=key, insecure_http=insecure_http)
    check_can_listen(f"tcp://{host}:{port}", "--port")
    if settings.buffer == "embedded":
        wait_for_previous_buffer(settings)
        check_can_listen(settings.buffer_bind, "--buffer-bind (buffer_bind)", any_port=True)
        if settings.buffer_token_bind is not None and settings.buffer_security != "none":
            check_can_listen(settings.buffer_token_bind, "--buffer-token-bind (buffer_token_bind)", any_port=True)
    else:
        err_console.print(check_external_buffer(settings), highlight=False, soft_wrap=True)
    if insecure_http:
        err_console.print(f"[bold red]WARNING: {INSECURE_WARNING}[/]")
    scheme = "http" if insecure_http else "https"
    err_console.print(
        f"photonstream API on {scheme}://{host}:{port} (auth: {', '.join(settings.auth_modes)}; "
        f"database: {settings.resolved_database_url.split('@')[-1]})"
    )
    try:
        uvicorn.Server(server).run()
    except SystemExit:
        failure = app.startup_error
        if isinstance(failure, PhotonstreamError | OSError):
            raise ConfigError(f"the service did not start: {failure}") from None
        if failure is not None:
            raise failure from None  # a bug: its traceback, once
        raise
