"""``python -m photonstream.consumers.xtal worker|merge``: run a crystallography worker or the merger.

    worker --buffer tcp://HOST:5600 --stream EXP/RUN/ID [--group xtal] [--credit 4] --results tcp://MERGER:5700
           [--options JSON]
    worker --pull tcp://HOST:5555 --results ...          (a zmq-push pipeline; one reader only, see worker.py)
    merge --bind tcp://*:5700 --workers N [--mtz out.mtz] [--report out.json] [--report-every 50] [--settle 2]

The merger prints one JSON line per report and writes the final report (with the CC history, per-worker counts and
the powder pattern) to ``--report``. It finishes once ``--workers`` end records have arrived, or once every event of
the stream has a result and ``--settle`` more seconds have passed (a worker that died sends no end record; see
``run_merger``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from photonstream.consumers.xtal import XtalOptions, run_merger, run_xtal_worker
from photonstream.errors import PhotonstreamError


def _worker(args: argparse.Namespace) -> None:
    options = XtalOptions.model_validate_json(args.options) if args.options else XtalOptions()
    if args.buffer:
        from photonstream.buffer.credentials import Credentials
        from photonstream.client import subscribe

        credentials = Credentials.from_env()  # set for workers the API starts (elastic pools)
        messages: Any = subscribe(
            args.buffer, args.stream, group=args.group, credit=args.credit, timeout_s=args.idle_timeout,
            credentials=credentials,
        )  # fmt: skip
    else:
        from photonstream.consumers.pull import read_stream

        messages = read_stream(args.pull, idle_timeout_s=args.idle_timeout)
    summary = run_xtal_worker(messages, args.results, options, worker_id=args.worker_id)
    counts = {"worker": summary.worker, "frames": summary.frames, "hits": summary.hits, "indexed": summary.indexed}
    print(json.dumps({**counts, "seconds": summary.seconds}), flush=True)


def _merge(args: argparse.Namespace) -> None:
    publisher = None
    if args.publish:
        from photonstream.client import ResultPublisher

        publisher = ResultPublisher.from_stream_info(args.publish, group="xtal-merger", worker="merger")
    try:
        outcome = run_merger(
            args.bind,
            args.workers,
            mtz_path=args.mtz,
            report_every=args.report_every,
            on_report=lambda report: print(json.dumps(report), flush=True),
            idle_timeout_s=args.idle_timeout,
            publisher=publisher,
        )
    finally:
        if publisher is not None:
            publisher.close()
    if args.report:
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
        Path(args.report).write_text(json.dumps(document))


def _powder_document(powder: Any) -> dict[str, Any]:
    return {
        "d_spacing": powder.d_spacing.tolist(),
        "intensity": powder.intensity.tolist(),  # mean per pixel in each ring
        "sum_signal": powder.sum_signal.tolist(),
        "sum_normalization": powder.sum_normalization.tolist(),
        "frames": powder.frames,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m photonstream.consumers.xtal")
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="process frames, send results to the merger")
    source = worker.add_mutually_exclusive_group(required=True)
    source.add_argument("--buffer", help="buffer service endpoint (with --stream)")
    source.add_argument("--pull", help="zmq-push endpoint of a pipeline")
    worker.add_argument("--stream", default="", help="EXPERIMENT/RUN/STREAM_ID in the buffer")
    worker.add_argument("--group", default="xtal", help="buffer consumer group (work-sharing)")
    worker.add_argument("--credit", type=int, default=4, help="frames fetched ahead (unacked until processed)")
    worker.add_argument("--results", required=True, help="merger endpoint")
    worker.add_argument("--options", default="", help="XtalOptions as JSON")
    worker.add_argument("--worker-id", default=None)
    worker.add_argument("--idle-timeout", type=float, default=60.0)
    merge = commands.add_parser("merge", help="merge worker results, write MTZ")
    merge.add_argument("--bind", required=True, help="endpoint the workers push to")
    merge.add_argument("--workers", type=int, default=1, help="end records to wait for")
    merge.add_argument("--mtz", default=None)
    merge.add_argument("--report", default=None, help="write the final report (JSON) here")
    merge.add_argument("--report-every", type=int, default=50)
    merge.add_argument("--publish", default=None, help="the stream's create response (JSON): publish results")
    merge.add_argument("--idle-timeout", type=float, default=120.0)
    merge.add_argument(
        "--settle", type=float, default=2.0, help="once every event has a result, wait this long for end records"
    )
    args = parser.parse_args(argv)
    if args.command == "worker" and args.buffer and not args.stream:
        parser.error("--buffer needs --stream")
    try:
        if args.command == "worker":
            _worker(args)
        else:
            _merge(args)
    except PhotonstreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
