"""Stopping an elastic pool: seconds from ``ElasticPool.stop`` until every worker's processes are gone, with the
workers cancelled one after the other (1 thread) and at once (``photonstream.jobs.elastic.CANCEL_THREADS``).

Local backend, ``WORKERS`` workers that sleep; in one case they end on SIGTERM (as ``photonstream consume`` does),
in the other they ignore it and are killed after the backend's grace period (``GRACE_S``). A local cancel waits
until the job's processes are gone, so one after the other costs the sum of the cancels, at once about the
longest one.

    python -m benchmarks.pool_cancel [--json]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from photonstream.jobs import elastic
from photonstream.jobs.base import JobState
from photonstream.jobs.elastic import ElasticPool, LagReading, WorkerPool
from photonstream.jobs.local import LocalBackend

WORKERS = 8
GRACE_S = 1.0
START_TIMEOUT_S = 60.0


def stop_seconds(threads: int, ignores_sigterm: bool, folder: Path) -> float:
    """Start a pool of sleeping workers, wait until all run, and time ``stop()``."""
    default = elastic.CANCEL_THREADS
    elastic.CANCEL_THREADS = threads
    backend = LocalBackend(state_dir=folder / "state", max_concurrent=WORKERS + 2, cancel_grace_s=GRACE_S)
    code = "import signal, time\n"
    if ignores_sigterm:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "time.sleep(600)\n"
    spec = WorkerPool(name="bench", group="g", command=[sys.executable, "-c", code], min_workers=WORKERS,
                      max_workers=WORKERS)  # fmt: skip
    pool = ElasticPool(spec, backend, lambda: LagReading(lag=0, members=WORKERS), endpoint="-", stream="-",
                       workdir=folder / "work")  # fmt: skip
    try:
        pool.tick()
        deadline = time.monotonic() + START_TIMEOUT_S
        while any(backend.status(worker.job_id).state != JobState.RUNNING for worker in pool.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("the workers did not all start")
            time.sleep(0.05)
        time.sleep(0.5)  # the interpreters are past their start-up (and have set their signal handlers)
        began = time.perf_counter()
        pool.stop("benchmark")
        return time.perf_counter() - began
    finally:
        elastic.CANCEL_THREADS = default
        pool.stop()
        backend.close()


def main(json_only: bool = False) -> None:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"machine": machine(), "workers": WORKERS, "grace_s": GRACE_S}
    for ignores in (False, True):
        behaviour = "ignore SIGTERM (killed after the grace)" if ignores else "end on SIGTERM"
        for threads in (1, elastic.CANCEL_THREADS):
            with tempfile.TemporaryDirectory() as folder:
                seconds = stop_seconds(threads, ignores, Path(folder))
            case = f"{behaviour}, {'one after the other' if threads == 1 else f'{threads} at once'}"
            rows.append({"case": case, "workers": WORKERS, "stop_s": round(seconds, 3)})
            summary[f"{'ignore' if ignores else 'end'}_threads{threads}_s"] = round(seconds, 3)
    report(f"stopping a pool of {WORKERS} local workers", rows, summary, json_only)


if __name__ == "__main__":
    main("--json" in sys.argv[1:])
