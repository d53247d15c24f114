"""``photonstream xtal worker|merge`` (also ``python -m photonstream.consumers.xtal``): a crystallography worker or
the merger.

    worker --buffer tcp://HOST:5600 --stream EXP/RUN/ID [--group xtal] [--credit 4] --results tcp://MERGER:5700
           [--options JSON]
    worker --pull tcp://HOST:5555 --results ...          (a zmq-push pipeline; one reader only, see worker.py)
    merge --bind tcp://*:5700 --workers N [--mtz out.mtz] [--report out.json] [--report-every 50] [--settle 2]
          [--structure tcp://HOST:5710 | --structure-bind tcp://*:5710] [--structure-every 10]
    structure (--bind tcp://*:5710 | --connect tcp://MERGER:5710) --model 1aki --out DIR
          [--publish stream.json | --buffer tcp://BUFFER:5600 --stream EXP/RUN/ID]

The merger prints one JSON line per report and writes the final report (with the CC history, per-worker counts and
the powder pattern) to ``--report``. It finishes once ``--workers`` end records have arrived, or once every event of
the stream has a result and ``--settle`` more seconds have passed (a worker that died sends no end record; see
``run_merger``). ``photonstream xtal`` runs this module in a fresh interpreter: cctbx must be imported before
scipy's compiled modules, which the main CLI has loaded by then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from photonstream.cli_support import friendly
from photonstream.consumers.xtal import XtalOptions, run_merger, run_xtal_worker  # cctbx: nothing above loads scipy
from photonstream.errors import ConfigError

xtal_app = typer.Typer(
    help="Crystallography: workers index and integrate hits, a merger writes MTZ, a structure stage refines.",
    no_args_is_help=True,
    add_completion=False,
)


@xtal_app.command("worker")
@friendly
def worker(
    results: Annotated[str, typer.Option(help="the merger's endpoint, tcp://HOST:PORT")],
    buffer: Annotated[str | None, typer.Option(help="buffer endpoint to read from (with --stream)")] = None,
    pull: Annotated[str | None, typer.Option(help="a zmq-push pipeline's endpoint to read from instead")] = None,
    stream: Annotated[str, typer.Option(help="EXPERIMENT/RUN/STREAM_ID in the buffer")] = "",
    group: Annotated[str, typer.Option(help="buffer consumer group (work-sharing)")] = "xtal",
    credit: Annotated[int, typer.Option(min=1, help="frames fetched ahead (unacked until processed)")] = 4,
    options: Annotated[str, typer.Option(help="XtalOptions as JSON (cell, space group, hit finding, ...)")] = "",
    worker_id: Annotated[str | None, typer.Option(help="this worker's name in the merger's report")] = None,
    idle_timeout: Annotated[float, typer.Option(help="give up after this many seconds without a frame")] = 60.0,
) -> None:
    """Process frames (hits, spots, indexing, integration) and send each result to the merger."""
    if (buffer is None) == (pull is None):
        raise ConfigError("worker: give exactly one of --buffer (with --stream) and --pull")
    if buffer is not None and not stream:
        raise ConfigError("--buffer needs --stream")
    try:
        settings = XtalOptions.model_validate_json(options) if options else XtalOptions()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(the document)"
        raise ConfigError(f"--options: {where}: {first['msg']}") from None
    messages: Any
    if buffer is not None:
        from photonstream.buffer.credentials import Credentials
        from photonstream.client import subscribe

        credentials = Credentials.from_env()  # set for workers the API starts (elastic pools)
        messages = subscribe(buffer, stream, group=group, credit=credit, timeout_s=idle_timeout,
                             credentials=credentials)  # fmt: skip
    else:
        from photonstream.consumers.pull import read_stream

        messages = read_stream(pull, idle_timeout_s=idle_timeout)
    summary = run_xtal_worker(messages, results, settings, worker_id=worker_id)
    counts = {"worker": summary.worker, "frames": summary.frames, "hits": summary.hits, "indexed": summary.indexed}
    print(json.dumps({**counts, "seconds": summary.seconds}), flush=True)


@xtal_app.command("merge")
@friendly
def merge(
    bind: Annotated[str, typer.Option(help="endpoint the workers push to, e.g. tcp://*:5700")],
    workers: Annotated[int, typer.Option(min=1, help="end records to wait for")] = 1,
    mtz: Annotated[Path | None, typer.Option(help="write the merged intensities here (MTZ)")] = None,
    report: Annotated[Path | None, typer.Option(help="write the final report (JSON) here")] = None,
    report_every: Annotated[int, typer.Option(min=1, help="print a report line every this many frames")] = 50,
    publish: Annotated[
        Path | None, typer.Option(help="the stream's create response (JSON): publish the reports as its results")
    ] = None,
    idle_timeout: Annotated[float, typer.Option(help="give up after this many seconds without a result")] = 120.0,
    settle: Annotated[
        float, typer.Option(min=0, help="once every event has a result, wait this long for end records")
    ] = 2.0,
    structure: Annotated[
        str | None, typer.Option(help="a structure stage's endpoint, tcp://HOST:PORT: send it the merged data")
    ] = None,
    structure_bind: Annotated[
        str | None, typer.Option(help="offer the merged data here for a structure stage that connects, tcp://*:PORT")
    ] = None,
    structure_every: Annotated[float, typer.Option(min=1, help="seconds between merged-data snapshots")] = 10.0,
) -> None:
    """Merge the workers' results (one JSON line per report), then write MTZ and the final report."""
    from photonstream.consumers.xtal.to_structure import StructureFeed

    if structure is not None and structure_bind is not None:
        raise ConfigError("merge: give at most one of --structure and --structure-bind")
    feed = None
    if structure is not None or structure_bind is not None:
        feed = StructureFeed(structure or str(structure_bind), structure_every, bind=structure_bind is not None)
    publisher = None
    if publish is not None:
        from photonstream.client import ResultPublisher

        publisher = ResultPublisher.from_stream_info(str(publish), group="xtal-merger", worker="merger")
    try:
        outcome = run_merger(
            bind,
            workers,
            mtz_path=mtz,
            report_every=report_every,
            on_report=lambda line: print(json.dumps(line), flush=True),
            idle_timeout_s=idle_timeout,
            settle_s=settle,
            publisher=publisher,
            structure=feed,
        )
    finally:
        if publisher is not None:
            publisher.close()
        if feed is not None:
            feed.close()
    if report is not None:
        powder = outcome.powder
        document = {
            "report": outcome.report,
            "history": outcome.history,
            "workers": outcome.workers,
            "workers_missing": outcome.workers_missing,
            "mtz": outcome.mtz_path,
            "seconds": outcome.seconds,
            "results_window_s": outcome.results_window_s,
            "powder": None if powder is None else _powder_document(powder),
        }
        report.write_text(json.dumps(document))


@xtal_app.command("structure")
@friendly
def structure_stage(
    out: Annotated[Path, typer.Option(help="folder for structure.mtz, the CCP4 maps and structure.json")],
    model: Annotated[str, typer.Option(help="the atomic model to refine: a bundled name (1aki) or a PDB/mmCIF file")],
    bind: Annotated[str | None, typer.Option(help="take merged data a merger sends here, e.g. tcp://*:5710")] = None,
    connect: Annotated[
        str | None, typer.Option(help="take merged data from a merger's --structure-bind, tcp://HOST:PORT")
    ] = None,
    publish: Annotated[
        Path | None, typer.Option(help="the stream's create response (JSON): publish each update as its result")
    ] = None,
    buffer: Annotated[
        str | None, typer.Option(help="publish to this buffer (with --stream; credential from the environment)")
    ] = None,
    stream: Annotated[str, typer.Option(help="EXPERIMENT/RUN/STREAM_ID the results belong to")] = "",
    worker_id: Annotated[str, typer.Option(help="this stage's name in its results")] = "structure",
    budget: Annotated[float, typer.Option(min=1, help="seconds after which an update starts no new step")] = 20.0,
    idle_timeout: Annotated[float, typer.Option(help="give up after this many seconds without merged data")] = 300.0,
) -> None:
    """Refine the model against each newest merged snapshot (one JSON line per update) until the final one."""
    from photonstream.client import ResultPublisher
    from photonstream.consumers.structure import run_structure_stage

    if (bind is None) == (connect is None):
        raise ConfigError("structure: give exactly one of --bind and --connect")
    if publish is not None and buffer is not None:
        raise ConfigError("structure: give at most one of --publish and --buffer")
    if buffer is not None and not stream:
        raise ConfigError("--buffer needs --stream")
    publisher = None
    if publish is not None:
        publisher = ResultPublisher.from_stream_info(str(publish), group="xtal-structure", worker=worker_id)
    elif buffer is not None:
        from photonstream.buffer.credentials import Credentials

        publisher = ResultPublisher(buffer, stream, Credentials.from_env(), group="xtal-structure", worker=worker_id)
    keys = ("update", "frames", "indexed", "r_work", "r_free", "d_min", "seconds", "steps", "final")
    try:
        run_structure_stage(str(bind or connect), model, out, bind=bind is not None, publisher=publisher,
                            idle_timeout_s=idle_timeout, budget_s=budget,
                            on_update=lambda s: print(json.dumps({k: s[k] for k in keys}), flush=True))  # fmt: skip
    finally:
        if publisher is not None:
            publisher.close()


def _powder_document(powder: Any) -> dict[str, Any]:
    return {
        "d_spacing": powder.d_spacing.tolist(),
        "intensity": powder.intensity.tolist(),  # mean per pixel in each ring
        "sum_signal": powder.sum_signal.tolist(),
        "sum_normalization": powder.sum_normalization.tolist(),
        "frames": powder.frames,
    }


def main() -> None:
    xtal_app(prog_name="photonstream xtal")


if __name__ == "__main__":
    main()
