"""A whole distributed crystallography run on this machine, for tests, benchmarks and trying things out.

    run = run_local({"type": "synthetic-diffraction", "events": 300, "hit_fraction": 0.8}, workers=2, folder=tmp)
    run.document["report"]["cc_reference"], run.mtz

A buffer service runs in a thread here; the merger and ``workers`` worker processes start with
``python -m photonstream.consumers.xtal`` (so cctbx is imported first in each); the workers join one
work-sharing group; once all are members the pipeline (the given source → ``buffer`` handler) runs here. With
``prefill`` the pipeline runs first and the workers then read the run from the buffer, so producing frames does not
compete with them for CPU (for measuring the workers alone). The result holds each worker's summary, the merger's
running reports, its final document, the MTZ path and the consumer group's buffer statistics.

``kill=WorkerKill(worker=1, after_results=30)`` SIGKILLs that worker once the merger's running report credits it
with that many results (a fault test: its unacked frames are redelivered to the others, and the merger finishes
without its end record once every event has a result; see ``merge.run_merger``).

``structure="1aki"`` (a model) also runs a structure stage process on the merger's snapshots (every
``structure_every_s``); its files go to ``folder/structure`` and its update lines to ``LocalRun.structure``.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photonstream.errors import PhotonstreamError
from photonstream.frames import EndMessage

STREAM = {"experiment": "local", "run": 1, "stream_id": "xtal"}
GROUP = "xtal"


class LocalRunError(PhotonstreamError):
    """A worker or the merger of a local run failed or did not finish. (500)"""


@dataclass(frozen=True)
class WorkerKill:
    """SIGKILL worker number ``worker`` once the merger has counted ``after_results`` of its results."""

    worker: int
    after_results: int


@dataclass
class LocalRun:
    workers: list[dict[str, Any]]  # the final summary line of each worker that finished (not the killed one)
    reports: list[dict[str, Any]]  # the merger's running reports, then its final one
    document: dict[str, Any]  # the merger's final document (report, history, workers, powder)
    mtz: Path
    seconds: float  # pipeline start (with prefill: worker start) → merger done
    events: int
    group: dict[str, Any] = field(default_factory=dict)  # the buffer's statistics of the workers' group
    killed: list[str] = field(default_factory=list)  # worker ids killed on purpose (``kill``)
    structure: list[dict[str, Any]] = field(default_factory=list)  # the structure stage's update lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn(log: Path, *args: str) -> subprocess.Popen[str]:
    """``python -m photonstream.consumers.xtal ARGS`` with stdout to ``log``.out and stderr to ``log``.err."""
    command = [sys.executable, "-m", "photonstream.consumers.xtal", *args]
    with log.with_suffix(".out").open("w") as out, log.with_suffix(".err").open("w") as err:
        return subprocess.Popen(command, stdout=out, stderr=err, text=True)


def _finish(process: subprocess.Popen[str], log: Path, timeout_s: float) -> list[str]:
    """Wait for ``process``; its stdout lines, or ``LocalRunError`` with the end of its stderr."""
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        raise LocalRunError(f"local xtal run: {log.name} did not finish within {timeout_s:g} s") from None
    if process.returncode != 0:
        error = log.with_suffix(".err").read_text().strip()[-2000:]
        raise LocalRunError(f"local xtal run: {log.name} exited {process.returncode}: {error}")
    return log.with_suffix(".out").read_text().strip().splitlines()


def _members(endpoint: str, stream: str) -> int:
    from photonstream.buffer.cli import fetch_stats

    groups = fetch_stats(endpoint).get("streams", {}).get(stream, {}).get("groups", {})
    return int(groups.get(GROUP, {}).get("members", 0))


def _group_stats(endpoint: str, stream: str, wait_s: float = 3.0) -> dict[str, Any]:
    """The group's statistics once the buffer has ended the stream for it (its statistics are a snapshot taken
    every second, so wait for one that shows the end)."""
    from photonstream.buffer.cli import fetch_stats

    deadline = time.monotonic() + wait_s
    while True:
        group = fetch_stats(endpoint).get("streams", {}).get(stream, {}).get("groups", {}).get(GROUP, {})
        if group.get("ended") or time.monotonic() > deadline:
            return dict(group)
        time.sleep(0.1)


class _Killer(threading.Thread):
    """Watches the merger's running reports and SIGKILLs one worker once it has been credited enough results."""

    def __init__(self, kill: WorkerKill, process: subprocess.Popen[str], reports: Path) -> None:
        super().__init__(name="xtal-killer", daemon=True)
        self.kill, self.process, self.reports = kill, process, reports
        self.worker_id = f"worker-{kill.worker}"
        self.done = threading.Event()
        self.killed = False

    def _credited(self) -> int:
        lines = self.reports.read_text().splitlines() if self.reports.exists() else []
        for line in reversed(lines):
            try:
                return int(json.loads(line).get("by_worker", {}).get(self.worker_id, 0))
            except json.JSONDecodeError:
                continue  # a line still being written
        return 0

    def run(self) -> None:
        while not self.done.wait(0.02):
            if self.process.poll() is not None:
                return
            if self._credited() >= self.kill.after_results:
                self.process.kill()
                self.process.wait()
                self.killed = True
                return


def _produce(config: dict[str, Any]) -> EndMessage:
    from photonstream.config.pipeline import validate_pipeline
    from photonstream.pipeline import Pipeline

    end = Pipeline(validate_pipeline(config)).run()
    if end.reason != "completed":
        raise LocalRunError(f"local xtal run: the pipeline ended {end.reason}: {end.error}")
    return end


def run_local(
    source: dict[str, Any],
    workers: int,
    folder: Path,
    options: dict[str, Any] | None = None,
    *,
    report_every: int = 50,
    timeout_s: float = 600.0,
    prefill: bool = False,
    kill: WorkerKill | None = None,
    structure: str | None = None,
    structure_every_s: float = 10.0,
) -> LocalRun:
    """Run ``source`` through a buffer to ``workers`` worker processes and a merger; see the module docstring."""
    from photonstream.buffer import BufferService, BufferSettings

    folder.mkdir(parents=True, exist_ok=True)
    stream = f"{STREAM['experiment']}/{STREAM['run']}/{STREAM['stream_id']}"
    service = BufferService(BufferSettings(bind="tcp://127.0.0.1:*"))
    endpoint = service.start()
    results = f"tcp://127.0.0.1:{_free_port()}"
    processes: list[subprocess.Popen[str]] = []
    config = {"stream": STREAM, "source": source, "handlers": [{"type": "buffer", "address": endpoint}]}
    try:
        if prefill:
            end = _produce(config)
        began = time.perf_counter()
        stage_args: tuple[str, ...] = ()
        stage = None
        if structure is not None:
            stage_endpoint = f"tcp://127.0.0.1:{_free_port()}"
            stage = _spawn(folder / "structure-stage", "structure", "--bind", stage_endpoint, "--model", structure,
                           "--out", str(folder / "structure"))  # fmt: skip
            processes.append(stage)
            stage_args = ("--structure", stage_endpoint, "--structure-every", str(structure_every_s))
        merger = _spawn(
            folder / "merger",
            *("merge", "--bind", results, "--workers", str(workers), "--report-every", str(report_every)),
            *("--mtz", str(folder / "merged.mtz"), "--report", str(folder / "report.json"), *stage_args),
        )
        processes.append(merger)
        worker_args = ("worker", "--buffer", endpoint, "--stream", stream, "--group", GROUP, "--results", results)
        worker_args += ("--options", json.dumps(options or {}))
        pool = [_spawn(folder / f"worker-{i}", *worker_args, "--worker-id", f"worker-{i}") for i in range(workers)]
        processes.extend(pool)
        killer = None if kill is None else _Killer(kill, pool[kill.worker], (folder / "merger").with_suffix(".out"))
        if killer is not None:
            killer.start()
        if not prefill:
            deadline = time.monotonic() + 120
            while _members(endpoint, stream) < workers:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise LocalRunError(f"local xtal run: {workers} workers did not all join the buffer group")
                time.sleep(0.05)
            began = time.perf_counter()
            end = _produce(config)
        target = None if kill is None else kill.worker
        try:
            # The target of ``kill`` last: the killer thread is the one waiting on it until then.
            outputs = [_finish(p, folder / f"worker-{i}", timeout_s) for i, p in enumerate(pool) if i != target]
            merger_lines = _finish(merger, folder / "merger", timeout_s)
            stage_lines = [] if stage is None else _finish(stage, folder / "structure-stage", timeout_s)
        finally:
            if killer is not None:
                killer.done.set()
                killer.join()
        if target is not None and killer is not None and not killer.killed:  # done before it had the results
            outputs.append(_finish(pool[target], folder / f"worker-{target}", timeout_s))
        seconds = time.perf_counter() - began
        return LocalRun(
            workers=[json.loads(lines[-1]) for lines in outputs],
            reports=[json.loads(line) for line in merger_lines],
            document=json.loads((folder / "report.json").read_text()),
            mtz=folder / "merged.mtz",
            seconds=seconds,
            events=end.events_sent,
            group=_group_stats(endpoint, stream),
            killed=[killer.worker_id] if killer is not None and killer.killed else [],
            structure=[json.loads(line) for line in stage_lines],
        )
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(10)
        service.stop()
