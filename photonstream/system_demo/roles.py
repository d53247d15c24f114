"""The demo's consumer processes: ``python -m photonstream.system_demo.roles worker|merge|trainer|structure``.

Each process first imports what its work needs (cctbx before anything else for ``worker`` and ``merge``; torch for
``trainer``), prints ``{"type": "ready"}`` and then reads one JSON line from stdin: its setup (the stream's buffer
link from the API's create response, its consumer group, the merger's endpoint, ...). So the demo starts them
while it sets up the services, and the slow imports are over before the request is made. They print JSON lines:
``progress`` and ``report`` while they run, ``final`` at the end, ``error`` (and exit 1) when they fail.

Link: ``{"address": "tcp://...", "stream": "exp/run/id", "credentials": {...} | null}`` where ``credentials`` is
``photonstream.buffer.credentials.Credentials`` as a dict (absent or null: a buffer without authentication).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from photonstream.config.environment import DEMO_PID_ENV

PROGRESS_EVERY_S = 0.5
RESULT_TICK_S = 0.1  # the merger counts its results every this often (the demo's analysis lag, ``verdict.lag_at``)
PARENT_ENV = DEMO_PID_ENV


def die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM here when the demo that started this process dies, however it dies."""
    parent = os.environ.get(PARENT_ENV)
    if not sys.platform.startswith("linux") or not parent:
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if str(os.getppid()) != parent:  # it died before the line above
        raise SystemExit(1)


def emit(kind: str, **fields: Any) -> None:
    print(json.dumps({"type": kind, "at": time.time(), **fields}, default=str), flush=True)


def read_setup() -> dict[str, Any]:
    emit("ready", pid=os.getpid())
    line = sys.stdin.readline()
    if not line.strip():
        raise SystemExit(0)  # the demo ended before it needed this process
    setup: dict[str, Any] = json.loads(line)
    return setup


def open_subscription(link: dict[str, Any], group: str, policy: str, **options: Any) -> Any:
    """A buffer subscription to the link's stream, with its credentials if it has any."""
    from photonstream.client import subscribe

    if link.get("credentials"):
        from photonstream.buffer.credentials import Credentials

        options["credentials"] = Credentials.from_dict(link["credentials"])
    return subscribe(link["address"], link["stream"], group=group, policy=policy, **options)


class FrameClock:
    """Passes messages through, noting when the first frame arrived, the creation times of the first and last
    frames (the pipeline's stamps), and how many frames came and how many of them without their image."""

    def __init__(self, messages: Iterable[Any]) -> None:
        self.messages = messages
        self.first_received_at: float | None = None
        self.first_created_ns = 0
        self.last_created_ns = 0
        self.frames = 0
        self.vetoed = 0  # frames that came without their image (a veto step took it out)

    def __iter__(self) -> Iterator[Any]:
        from photonstream.frames import Frame, FrameBatch

        for message in self.messages:
            if isinstance(message, Frame | FrameBatch):
                frames = message.frames if isinstance(message, FrameBatch) else [message]
                self.first_received_at = self.first_received_at or time.time()
                for frame in frames:
                    self.vetoed += bool(frame.metadata.get("vetoed"))
                    created = frame.created_ns or 0
                    self.first_created_ns = self.first_created_ns or created
                    self.last_created_ns = max(self.last_created_ns, created)
                self.frames += len(frames)
            yield message

    def as_dict(self) -> dict[str, Any]:
        return {
            "first_received_at": self.first_received_at,
            "first_created_at": self.first_created_ns / 1e9 or None,
            "last_created_at": self.last_created_ns / 1e9 or None,
            "frames_received": self.frames,
            "frames_vetoed": self.vetoed,
        }


def latency_ms(subscription: Any) -> dict[str, float | None]:
    latency = getattr(getattr(subscription, "stats", None), "latency", None)
    if latency is None or not latency.count:
        return {"latency_p50_ms": None, "latency_p95_ms": None}
    return {
        "latency_p50_ms": round(latency.quantile(0.5) * 1e3, 2),
        "latency_p95_ms": round(latency.quantile(0.95) * 1e3, 2),
    }


# --- worker ------------------------------------------------------------------------------------------------------


def worker() -> None:
    import photonstream.consumers.xtal  # noqa: F401  (cctbx before scipy: first)
    from photonstream.client import subscribe  # noqa: F401  (imported now, not after the request)
    from photonstream.consumers.xtal import XtalOptions, run_xtal_worker

    setup = read_setup()
    subscription = open_subscription(
        setup["link"], setup["group"], "lossless", credit=setup.get("credit", 2), timeout_s=setup["idle_timeout_s"]
    )
    clock = FrameClock(subscription)
    options = XtalOptions.model_validate(setup.get("options") or {})
    summary = run_xtal_worker(clock, setup["results"], options, worker_id=setup["worker_id"])
    emit(
        "final",
        worker=summary.worker,
        frames=summary.frames,
        hits=summary.hits,
        indexed=summary.indexed,
        seconds=summary.seconds,
        **clock.as_dict(),
        **latency_ms(subscription),
    )


# --- merger ------------------------------------------------------------------------------------------------------


class ResultTimes:
    """Passes the workers' records to the merger, timing the first result and the first indexed one and printing
    running counts every ``PROGRESS_EVERY_S``. ``timeline[i]``: the results that had come before
    ``first_result_at + i × RESULT_TICK_S`` (so the demo can tell how far analysis was behind at a given moment)."""

    def __init__(self, records: Iterable[dict[str, Any]]) -> None:
        self.records = records
        self.first_result_at: float | None = None
        self.first_indexed_at: float | None = None
        self.last_result_at: float | None = None
        self.counts = {"frames": 0, "hits": 0, "indexed": 0}
        self.timeline: list[int] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        shown = 0.0
        for record in self.records:
            if record.get("type") == "result":
                now = time.time()
                self.first_result_at = self.first_result_at or now
                self.last_result_at = now
                tick = int((now - self.first_result_at) / RESULT_TICK_S)
                while len(self.timeline) <= tick:  # ticks this result is the first of: the count before it
                    self.timeline.append(self.counts["frames"])
                self.counts["frames"] += 1
                self.counts["hits"] += bool(record.get("hit"))
                if record.get("indexed"):
                    self.counts["indexed"] += 1
                    self.first_indexed_at = self.first_indexed_at or now
                if now - shown >= PROGRESS_EVERY_S:
                    shown = now
                    emit("progress", **self.counts, **self.times())
            yield record

    def times(self) -> dict[str, float | None]:
        return {
            "first_result_at": self.first_result_at,
            "first_indexed_at": self.first_indexed_at,
            "last_result_at": self.last_result_at,
        }


def merge() -> None:
    import photonstream.consumers.xtal  # noqa: F401  (cctbx first)
    from photonstream.client import ResultPublisher
    from photonstream.consumers.xtal.merge import receive_results, run_merger
    from photonstream.consumers.xtal.to_structure import StructureFeed

    setup = read_setup()
    timed = ResultTimes(receive_results(setup["bind"], setup["idle_timeout_s"]))
    # the merger's figures (hit rate, indexing rate, cell) go to the API's results channel as it reports them
    publisher = ResultPublisher.from_stream_info(setup["stream_info"], group=setup["group"], worker="merger")
    feed = StructureFeed(setup["structure"], setup["structure_every_s"]) if setup.get("structure") else None
    first_cc_half_at: list[float] = []

    def on_report(report: dict[str, Any]) -> None:
        overall = (report.get("merging") or {}).get("overall") or {}
        if overall.get("cc_half") is not None and not first_cc_half_at:
            first_cc_half_at.append(time.time())
        emit("report", **report)

    try:
        outcome = run_merger(timed, setup["workers"], report_every=setup.get("report_every", 60), on_report=on_report,
                             publisher=publisher, structure=feed)  # fmt: skip
    finally:
        publisher.close()
        if feed is not None:
            feed.close()
    emit(
        "final",
        report=outcome.report,
        workers=outcome.workers,
        workers_missing=outcome.workers_missing,
        results_window_s=outcome.results_window_s,
        published=publisher.published,
        results_timeline=timed.timeline,
        results_tick_s=RESULT_TICK_S,
        first_cc_half_at=first_cc_half_at[0] if first_cc_half_at else None,
        outer_cc_half=(outcome.history[-1] if outcome.history else {}).get("outer_cc_half"),
        **timed.times(),
    )


STRUCTURE_KEYS = ("update", "frames", "indexed", "r_work", "r_free", "d_min", "seconds", "final", "reflections")


def structure() -> None:
    """The structure stage on the merger's snapshots; each update's summary goes to the API's results channel."""
    from pathlib import Path

    import photonstream.consumers.structure  # noqa: F401  (cctbx first)
    from photonstream.client import ResultPublisher
    from photonstream.consumers.structure import run_structure_stage

    os.nice(10)  # the crystallography workers first: refinement takes what the cores have left
    setup = read_setup()
    publisher = ResultPublisher.from_stream_info(setup["stream_info"], group=setup["group"], worker="structure")
    try:
        summaries = run_structure_stage(
            setup["bind"], setup["model"], Path(setup["out"]), publisher=publisher,
            idle_timeout_s=setup["idle_timeout_s"], budget_s=setup["budget_s"],
            on_update=lambda s: emit("update", **{k: s[k] for k in STRUCTURE_KEYS}),
        )  # fmt: skip
    finally:
        publisher.close()
    last = summaries[-1]
    emit("final", final_map_at=time.time(), updates=len(summaries), peak_map=last["peak_map"],
         top_peaks=last["peaks"][:3], longest_update_s=max(s["seconds"] for s in summaries),
         **{k: last[k] for k in STRUCTURE_KEYS})  # fmt: skip


# --- trainer -----------------------------------------------------------------------------------------------------


def trainer() -> None:
    import torch

    torch.set_num_threads(1)  # a demo on a laptop: one core for training, the rest for the crystallography
    from photonstream.client import subscribe  # noqa: F401
    from photonstream.consumers.hitclassifier import train_hit_classifier

    setup = read_setup()
    subscriptions: list[Any] = []

    def messages() -> Any:
        subscription = open_subscription(
            setup["link"], setup["group"], setup.get("policy", "lossless"), credit=8, timeout_s=setup["idle_timeout_s"]
        )
        subscriptions.append(subscription)
        return subscription

    shown = [0.0]

    def progress(state: dict[str, Any]) -> None:
        now = time.time()
        if now - shown[0] >= PROGRESS_EVERY_S:
            shown[0] = now
            emit("progress", **state)

    report = train_hit_classifier(messages, label="true_hit", array=setup.get("array"),
                                  image_size=setup.get("image_size", 64), batch_size=16,
                                  timeout_s=setup["idle_timeout_s"], progress=progress)  # fmt: skip
    emit("final", **report.as_dict(), **(latency_ms(subscriptions[0]) if subscriptions else {}))


ROLES: dict[str, Callable[[], None]] = {"worker": worker, "merge": merge, "trainer": trainer, "structure": structure}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in ROLES:
        print(f"usage: python -m photonstream.system_demo.roles {'|'.join(ROLES)}", file=sys.stderr)
        return 2
    die_with_parent()
    try:
        ROLES[args[0]]()
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # reported to the demo as one line; the traceback goes to this process's log
        import traceback

        traceback.print_exc()
        emit("error", message=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
