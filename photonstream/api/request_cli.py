"""``photonstream request create|list|show|cancel|logs|watch``: the API's command-line client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from photonstream.api.cli import split_names
from photonstream.cli_support import console, err_console, friendly
from photonstream.config.environment import API_URL_ENV, CLIENT_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV, TOKEN_ENV
from photonstream.errors import ConfigError

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
    url: str | None = typer.Option(None, "--url", envvar=API_URL_ENV, help="the API, e.g. https://host:8443"),
    cert: Path | None = typer.Option(None, "--cert", envvar=CLIENT_CERT_ENV, help="your client certificate"),
    key: Path | None = typer.Option(None, "--key", envvar=CLIENT_KEY_ENV, help="its private key"),
    ca: Path | None = typer.Option(None, "--ca-cert", envvar=CLIENT_CA_ENV, help="CA certificate to trust"),
    token: str | None = typer.Option(None, "--token", envvar=TOKEN_ENV, help="bearer token"),
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
def request_watch(
    ctx: typer.Context,
    stream_id: str = typer.Argument(...),
    every: float = typer.Option(2.0, "--every", min=0, help="print the counts and rates at most this often (s)"),
) -> None:
    """Follow a stream until it ends: its state changes, events sent and rates, pool decisions; exit status 0 when
    it completed, 1 otherwise."""
    import time

    from rich.live import Live
    from rich.spinner import Spinner

    with _client(ctx) as api:
        stream = api.get_stream(stream_id)
        spinner = Spinner("dots", text=f"{stream.id}: {_state(stream.state)}")
        final, state = stream.state, stream.state
        latest: dict[str, dict[str, Any]] = {}  # run address -> its last progress report
        printed: dict[str, tuple[float, str]] = {}  # run address -> (when, what) last printed
        with Live(spinner, console=err_console, transient=True, refresh_per_second=8):
            for event in api.events(stream_id):
                data = event.data
                if event.event == "state":
                    state = data["to"]
                    line = f"{data['at'][11:19]} {data['from'] or '-'} → {_state(state)} {data['reason']}"
                    console.print(line, soft_wrap=True)
                elif event.event == "progress":
                    address = str(data.get("address") or "")
                    latest[address] = data
                    line = progress_line(data, several_runs=len(stream.runs) > 1)
                    when, shown = printed.get(address, (0.0, ""))
                    if line != shown and time.monotonic() - when >= every:
                        console.print(line, highlight=False, soft_wrap=True)
                        printed[address] = (time.monotonic(), line)
                elif event.event == "pool":
                    console.print(f"{data['at'][11:19]} pool {data['pool']}: {data['action']} → {data['workers']} "
                                  f"workers (lag {data['lag']}) {data['detail']}", highlight=False,
                                  soft_wrap=True)  # fmt: skip
                elif event.event == "end":
                    final = data["state"]
                if event.event in ("state", "progress"):
                    counts = "; ".join(progress_line(p, several_runs=False) for p in latest.values())
                    spinner.update(text=f"{stream.id}: {_state(state)}" + (f"  {counts}" if counts else ""))
        for address, data in latest.items():  # the last counts, whatever --every held back
            line = progress_line(data, several_runs=len(stream.runs) > 1)
            if printed.get(address, (0.0, ""))[1] != line:
                console.print(line, highlight=False, soft_wrap=True)
    console.print(f"stream {stream_id} ended {_state(final)}")
    if final != "completed":
        raise typer.Exit(1)


def progress_line(report: dict[str, Any], several_runs: bool) -> str:
    """``HH:MM:SS 1,234/10,000 events sent, 120.0 ev/s, 45.2 MB/s, 1,200 acked by the buffer`` from a job's
    progress report (what ``photonstream.reporting`` sends)."""
    sent, expected = int(report.get("events_sent") or 0), report.get("expected_events")
    of = f"/{int(expected):,}" if expected else ""
    mb_per_s = float(report.get("mb_per_s") or 0)
    volume = f"{mb_per_s:,.1f} MB/s" if mb_per_s >= 1 or not mb_per_s else f"{mb_per_s * 1000:,.1f} kB/s"
    parts = [f"{sent:,}{of} events sent", f"{float(report.get('events_per_s') or 0):,.1f} ev/s", volume]
    if report.get("data_acked"):
        parts.append(f"{int(report['data_acked']):,} acked by the buffer")
    end = report.get("end") or {}
    if end:
        parts.append(f"ended {end.get('reason', '')}")
    where = f" {report['address']}" if several_runs and report.get("address") else ""
    return f"{str(report.get('at', ''))[11:19]}{where} " + ", ".join(parts)
