"""``photonstream status``: the dashboard's picture in the terminal (rich), from the API.

    photonstream status                       # the streams you may see: state, rate, lag; hops of running ones
    photonstream status STREAM_ID --watch     # one stream's hops, latency and samples, refreshed every second

Connection options are those of ``photonstream request`` (``--url``, ``--cert``/``--key``, ``--ca-cert``,
``--token``, or the PHOTONSTREAM_* variables).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table

from photonstream.config.environment import API_URL_ENV, CLIENT_CA_ENV, CLIENT_CERT_ENV, CLIENT_KEY_ENV, TOKEN_ENV
from photonstream.errors import PhotonstreamError

STATE_STYLES = {"queued": "yellow", "starting": "cyan", "streaming": "blue", "completed": "green",
                "failed": "red", "cancelled": "magenta"}  # fmt: skip


def _figure(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def streams_table(overview: dict[str, Any]) -> Table:
    table = Table(title=f"streams visible to {overview['me']['identity']}", title_justify="left")
    for name in ("stream", "state", "owner", "experiment", "runs", "rate msg/s", "received", "lag"):
        table.add_column(name, justify="right" if name in ("rate msg/s", "received", "lag") else "left")
    for s in overview["streams"]:
        style = STATE_STYLES.get(s["state"], "white")
        table.add_row(s["id"][:8], f"[{style}]{s['state']}[/]", s["owner"], s["experiment"],
                      ",".join(str(r) for r in s["runs"]), _figure(s["rate"]), _figure(s["received"]),
                      _figure(s["lag"]))  # fmt: skip
    return table


def hops_table(detail: dict[str, Any]) -> Table:
    """Per run and group: in = out + skipped + held, with the group's rate and lag."""
    table = Table(title=f"hops of {detail['id'][:8]} ({detail['experiment']})", title_justify="left")
    for name in ("run", "group", "policy", "in", "out", "skipped", "held", "lag", "redelivered", "rate out", "sum"):
        table.add_column(name, justify="left" if name in ("run", "group", "policy", "sum") else "right")
    for hop in detail["hops"]:
        if not hop["present"]:
            table.add_row(str(hop["run"]), "[dim]not in the buffer yet[/]")
            continue
        for g in hop["groups"]:
            balanced = g["in"] == g["out"] + g["skipped"] + g["held"]
            table.add_row(str(hop["run"]), g["name"], g["policy"], _figure(g["in"]), _figure(g["out"]),
                          _figure(g["skipped"]), _figure(g["held"]), _figure(g["lag"]), _figure(g["redelivered"]),
                          _figure(g["rate_out"]), "[green]✓[/]" if balanced else "[red]≠[/]")  # fmt: skip
    return table


def samples_line(detail: dict[str, Any]) -> str:
    monitor = detail.get("monitor") or {}
    latency = monitor.get("latency") or {}
    parts = [
        f"state [{STATE_STYLES.get(detail['state'], 'white')}]{detail['state']}[/]",
        f"rate {_figure(detail['rate'])} msg/s",
        f"latency p50 {_figure(latency.get('p50_ms'), 2)} ms, p99 {_figure(latency.get('p99_ms'), 2)} ms "
        f"({latency.get('count', 0)} sampled)",
        f"hit rate {_percent(detail.get('hit_rate'))}",
        f"indexing rate {_percent(detail.get('indexing_rate'))}",
        f"results {len(detail.get('results') or [])}",
    ]
    notes = [n for n in (detail.get("buffer_error"), monitor.get("error")) if n]
    return " · ".join(parts) + ("\n[red]" + "; ".join(notes) + "[/]" if notes else "")


def picture(client: Any, stream_id: str | None) -> Group:
    if stream_id is not None:
        detail = client.monitor_stream(stream_id)
        return Group(samples_line(detail), hops_table(detail))
    overview = client.monitor()
    parts: list[Any] = [streams_table(overview)]
    for s in overview["streams"]:
        if s["state"] == "streaming":
            parts.append(hops_table(client.monitor_stream(s["id"])))
    if overview.get("buffer_error"):
        parts.append(f"[red]buffer: {overview['buffer_error']}[/]")
    return Group(*parts)


def status_command(
    stream_id: Annotated[str | None, typer.Argument(help="a stream id: its hops, latency and samples")] = None,
    url: Annotated[str | None, typer.Option("--url", envvar=API_URL_ENV, help="the API")] = None,
    cert: Annotated[Path | None, typer.Option("--cert", envvar=CLIENT_CERT_ENV, help="client certificate")] = None,
    key: Annotated[Path | None, typer.Option("--key", envvar=CLIENT_KEY_ENV, help="its private key")] = None,
    ca: Annotated[Path | None, typer.Option("--ca-cert", envvar=CLIENT_CA_ENV, help="CA to trust")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar=TOKEN_ENV, help="bearer token")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="refresh every second until interrupted")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the API's JSON instead of tables")] = False,
) -> None:
    """Streams, their state, rates and lag, and per hop what went in, out, was skipped or is held."""
    from photonstream.client.api import PhotonstreamClient

    try:
        client = PhotonstreamClient(url, cert=cert, key=key, ca=ca, token=token)
    except PhotonstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    with client:
        run_status(lambda: client, stream_id, watch=watch, as_json=as_json)


def run_status(
    make_client: Callable[[], Any], stream_id: str | None, *, watch: bool = False, as_json: bool = False,
    console: Console | None = None,
) -> None:  # fmt: skip
    """The command's work, on any client (tests hand in one on an in-process app)."""
    console = console or Console()
    client = make_client()
    try:
        if as_json:
            data = client.monitor_stream(stream_id) if stream_id else client.monitor()
            console.print_json(json.dumps(data, default=str))
            return
        if not watch:
            console.print(picture(client, stream_id))
            return
        from rich.live import Live

        with Live(picture(client, stream_id), console=console, refresh_per_second=2) as live:
            while True:
                time.sleep(1.0)
                live.update(picture(client, stream_id))
    except KeyboardInterrupt:
        return
    except PhotonstreamError as exc:
        console.print(f"[red]error: {escape(str(exc))}[/]")
        raise typer.Exit(2) from None


status_app = typer.Typer(add_completion=False)
status_app.command("status")(status_command)
