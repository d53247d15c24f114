"""The ``photonstream`` command line."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from photonstream.api.cli import ca_app, db_app, policy_app
from photonstream.api.request_cli import request_app
from photonstream.api.serve_cli import serve_command
from photonstream.api.ui.status import status_command
from photonstream.bench_cli import bench_app
from photonstream.buffer.cli import buffer_app, consume
from photonstream.cli_support import console, err_console, friendly, plugin_summary, say_error
from photonstream.consumers.cli import tof, train_app
from photonstream.errors import ConfigError, PhotonstreamError

app = typer.Typer(help="Stream X-ray experiment data on request.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
app.add_typer(buffer_app, name="buffer")
app.add_typer(train_app, name="train", help="Train models live on a stream (PyTorch).")
app.add_typer(ca_app, name="ca")
app.add_typer(request_app, name="request")
app.add_typer(db_app, name="db")
app.add_typer(policy_app, name="policy")
app.command("consume")(consume)
app.command("serve")(serve_command)
app.command("status")(status_command)
app.command("tof")(tof)


def _say_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        from photonstream import __version__

        try:
            installed = version("photonstream")
        except PackageNotFoundError:  # run from a source tree that was not installed
            installed = __version__
        typer.echo(f"photonstream {installed} (Python {sys.version.split()[0]})")
        raise typer.Exit(0)


@app.callback()
def main_options(
    show_version: bool = typer.Option(
        False, "--version", callback=_say_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Stream X-ray experiment data on request."""


@app.command()
@friendly
def run(
    pipeline: Path = typer.Argument(..., help="pipeline YAML file"),
    events: int | None = typer.Option(None, "--events", "-n", min=0, help="stop after N source events"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
    as_json: bool = typer.Option(False, "--json", help="print the end message as JSON"),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=0, max=65535, help="serve Prometheus metrics of this run on this port (+ rank)"
    ),
    metrics_host: str = typer.Option("127.0.0.1", "--metrics-host", help="address for --metrics-port"),
) -> None:
    """Run a pipeline here: source → steps → serializer → handlers."""
    from photonstream.config.environment import STREAM_ID_ENV
    from photonstream.config.pipeline import load_pipeline
    from photonstream.mpi import detect_ranks
    from photonstream.pipeline import Pipeline, RunStats
    from photonstream.reporting import chain, reporter_from_env

    ranks = detect_ranks()
    try:
        config = load_pipeline(pipeline)
    except ConfigError:
        if ranks.is_root:
            raise
        raise typer.Exit(2) from None  # every rank reads the same file: rank 0 alone says what is wrong
    if events is not None:
        config = config.model_copy(update={"max_events": events})
    if metrics_port is not None:
        from photonstream.metrics import serve as serve_metrics

        serve_metrics(metrics_port + ranks.rank if metrics_port else 0, metrics_host)
    if not ranks.is_root:  # rank 0 reports for the whole run: its error line, or every rank's in its end message
        try:
            end = Pipeline(config, ranks.shard, ranks.comm).run()
        except ConfigError:
            raise typer.Exit(2) from None
        except PhotonstreamError:
            raise typer.Exit(1) from None
        raise typer.Exit(0 if end.reason == "completed" else 1)
    runner = Pipeline(config, ranks.shard, ranks.comm)
    report = reporter_from_env()  # a job launched by the API reports its progress back to it
    if os.environ.get(STREAM_ID_ENV):  # a job the API launched: its log shows where it ran, even if it is killed
        where = f"{config.stream.address}: running on {socket.gethostname()} (pid {os.getpid()})"
        err_console.print(where, soft_wrap=True, markup=False)
    if quiet or not sys.stderr.isatty():
        end = runner.run(progress=report)
    else:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            task = bar.add_task(config.stream.address, total=None, rate="")

            def show(stats: RunStats) -> None:
                bar.update(
                    task,
                    completed=stats.counts["read"],
                    total=stats.expected_events,
                    rate=f"{stats.events_per_s:,.0f} ev/s  {stats.bytes_sent / stats.elapsed / 1e6:,.0f} MB/s",
                )

            end = runner.run(progress=chain(show, report), progress_every=10)
    stats = runner.stats
    if as_json:
        print(json.dumps(end.to_dict()))
    else:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(end.counts.items()))
        console.print(
            f"{config.stream.address}: {end.reason}; {end.events_sent} events sent in {stats.elapsed:.2f} s "
            f"({stats.events_per_s:,.0f} ev/s, {stats.bytes_sent / stats.elapsed / 1e6:,.0f} MB/s); {counts}"
        )
    if end.reason != "completed":
        if end.error:
            err_console.print(f"[bold red]error:[/] {escape(end.error)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "")


@app.command()
def plugins(as_json: bool = typer.Option(False, "--json", help="machine-readable list")) -> None:
    """List every registered source, step, serializer and handler with its options."""
    from photonstream.handlers.base import registry as handlers
    from photonstream.processing.base import registry as steps
    from photonstream.serializers.base import registry as serializers
    from photonstream.sources.base import registry as sources

    listing: dict[str, dict[str, Any]] = {}
    for kind, reg in (
        ("source", sources),
        ("step", steps),
        ("serializer", serializers),
        ("handler", handlers),
    ):
        for cls in reg.classes():
            options = cls.Options
            name = options.model_fields["type"].default
            listing[f"{kind}:{name}"] = {
                "kind": kind,
                "name": name,
                "summary": plugin_summary(sys.modules[cls.__module__].__doc__ or "", name),
                "options": {
                    field: {
                        "type": _type_name(info.annotation),
                        "default": None if info.is_required() else repr(info.get_default(call_default_factory=True)),
                        "required": info.is_required(),
                        "description": info.description or "",
                    }
                    for field, info in options.model_fields.items()
                    if field != "type"
                },
            }
    if as_json:
        print(json.dumps(list(listing.values()), indent=1))
        return
    for entry in listing.values():
        title = f"{entry['kind']} [bold]{escape(entry['name'])}[/] — {escape(entry['summary'])}"  # '[psana]' is text
        table = Table(title=title, title_justify="left")
        table.add_column("option")
        table.add_column("type")
        table.add_column("default")
        table.add_column("description")
        for field, opt in entry["options"].items():
            default = "(required)" if opt["required"] else opt["default"]
            table.add_row(*(escape(cell) for cell in (field, opt["type"], default, opt["description"])))
        console.print(table)


@app.command()
@friendly
def receive(
    endpoint: str = typer.Argument(..., help="the pipeline's zmq-push/zmq-pub endpoint, e.g. tcp://127.0.0.1:5555"),
    timeout: float = typer.Option(30.0, min=0.001, help="give up after this many seconds without a message"),
    topic: str | None = typer.Option(None, "--topic", help="subscribe (zmq-pub) to this stream id; '' for all"),
    bind: bool = typer.Option(
        False, "--bind", help="bind ENDPOINT and let the pipeline connect (handler bind: false; needed for mpirun)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON line"),
) -> None:
    """Read a stream from a zmq-push or zmq-pub handler; print hit rate and throughput."""
    from photonstream.consumers.pull import StreamSummary, read_stream
    from photonstream.transport.sockets import check_endpoint

    summary = StreamSummary()
    for message in read_stream(check_endpoint(endpoint), idle_timeout_s=timeout, subscribe=topic, bind=bind):
        summary.add(message)
        if not as_json and summary.events and summary.events % 50 == 0:
            d = summary.as_dict()
            hit = f"hit rate {d['hit_rate']:.1%}  " if d["hit_rate"] is not None else ""
            err_console.print(f"{d['events']} events  {hit}{d['events_per_s']:,.0f} ev/s  {d['mb_per_s']:,.0f} MB/s")
    result = summary.as_dict()
    if as_json:
        print(json.dumps(result))
    else:
        hit = f"{result['hit_rate']:.1%}" if result["hit_rate"] is not None else "n/a"
        console.print(
            f"received {result['events']} events ({result['end_reason']}): hit rate {hit}, "
            f"{result['events_per_s']:,.0f} ev/s, {result['mb_per_s']:,.0f} MB/s, "
            f"median latency {result['latency_p50_ms']} ms"
        )


@app.command(
    "xtal",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def xtal(ctx: typer.Context) -> None:
    """Crystallography workers and merger: `photonstream xtal worker|merge ...` (--help for their options)."""
    import os

    # A fresh interpreter: cctbx must be imported before scipy/hdf5plugin, which this process already loaded.
    os.execv(sys.executable, [sys.executable, "-m", "photonstream.consumers.xtal", *ctx.args])


@app.command()
@friendly
def demo(
    duration: float = typer.Option(20.0, "--duration", min=1.0, help="seconds of acquisition"),
    rate: float = typer.Option(120.0, "--rate", min=1.0, help="frames per second"),
    detector: str = typer.Option(
        "epix10k2m", "--detector", help="epix10k2m (16×352×384) | small (4×192×192) | jungfrau4m (8×512×1024)"
    ),
    workers: int = typer.Option(2, "--workers", min=1, help="crystallography worker processes"),
    backend: str = typer.Option(
        "local", "--backend", help="job backend: local | slurm (a Slurm that runs jobs on this machine)"
    ),
    model: str = typer.Option("1aki", "--model", help="the crystal's atomic model, a bundled one (1aki: lysozyme)"),
    pump_probe: bool = typer.Option(
        False, "--pump-probe", help="laser on/off frames, Trp62 moved when on: the light-dark map shows it"
    ),
    keep_running: bool = typer.Option(False, "--keep-running", help="after the report, keep the API and dashboard"),
    as_json: bool = typer.Option(False, "--json", help="also print the report as one JSON line on stdout"),
) -> None:
    """The whole system here: CA, buffer, API + dashboard, a user's request, the job, crystallography workers
    merging as they go, a structure stage refining the model with maps, a hit-classifier trainer; live progress,
    then a report; everything it started is stopped."""
    from photonstream.system_demo.report import print_report, print_stopped
    from photonstream.system_demo.run import DemoOptions, run_system_demo

    options = DemoOptions(duration_s=duration, rate_hz=rate, detector=detector, workers=workers, backend=backend,
                          keep_running=keep_running, model=model, pump_probe=pump_probe)  # fmt: skip
    report = run_system_demo(options, err_console)
    if keep_running:
        print_stopped(report, err_console)
    else:
        print_report(report, err_console)
    if as_json:
        print(json.dumps(report.as_dict()))
    if report.state != "completed" or report.processes.get("left"):
        raise typer.Exit(1)


def main() -> None:
    try:
        app()
    except (PhotonstreamError, OSError) as exc:  # a command without @friendly: still one line, no traceback
        raise SystemExit(say_error(exc)) from None


if __name__ == "__main__":
    main()
