"""Time-of-flight analysis rate on one core: traces/s and MB/s for 10,000-sample records (int16 and float32), and
how many cores a 10 kHz × 10,000-sample stream needs at that rate.

Records come from ``synthetic-tof`` (default species, ~20 ions per shot, one channel). ``analyzer`` rows time
``TofAnalyzer.process`` on a (256, 1, 10000) array (baseline, arming, CFD, m/q, both histograms); ``consumer``
rows time ``run_tof_consumer`` over in-memory frames (adds stacking frames into batches of 64). Each rate is the
best of several timed rounds (the machine is shared).

    python -m benchmarks.tof [--json]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks._report import machine, report
from photonstream.consumers.tof import TofAnalyzer, TofOptions, run_tof_consumer
from photonstream.frames import EndMessage, StartMessage
from photonstream.sources.synthetic_tof import SyntheticTof, SyntheticTofOptions

SAMPLES = 10_000
SHOTS = 256
TARGET_HZ = 10_000


def _best_seconds(work: Callable[[], Any], rounds: int = 5, min_round_s: float = 0.3) -> float:
    """Shortest time of one call, over ``rounds`` rounds of at least ``min_round_s`` each."""
    work()
    best = float("inf")
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            work()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_round_s:
                break
        best = min(best, elapsed / calls)
    return best


def _row(case: str, dtype: str, seconds_per_batch: float, nbytes: int) -> dict[str, Any]:
    traces_per_s = SHOTS / seconds_per_batch
    return {
        "case": case,
        "dtype": dtype,
        "traces/s": traces_per_s,
        "MB/s": nbytes / seconds_per_batch / 1e6,
        "us/trace": 1e6 / traces_per_s,
        "cores for 10 kHz": TARGET_HZ / traces_per_s,
    }


def main(json_only: bool = False) -> None:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"machine": machine(), "samples": SAMPLES, "target_hz": TARGET_HZ}
    for dtype in ("int16", "float32"):
        source = SyntheticTof(SyntheticTofOptions(events=SHOTS, seed=1, samples=SAMPLES, dtype=dtype))
        start = StartMessage(stream_id="tof", source=source.open().details)
        frames = list(source.events())
        traces = np.stack([f.arrays["waveform"] for f in frames])
        analyzer = TofAnalyzer(TofOptions(), start=start)
        seconds = _best_seconds(lambda a=analyzer, t=traces: a.process(t))
        analyzer_row = _row("analyzer", dtype, seconds, traces.nbytes)
        messages = [start, *frames, EndMessage("tof", events_sent=SHOTS)]
        seconds = _best_seconds(lambda m=messages: run_tof_consumer(iter(m), batch_size=64), rounds=3)
        consumer_row = _row("consumer", dtype, seconds, traces.nbytes)
        rows += [analyzer_row, consumer_row]
        hits = analyzer.process(traces).hits
        summary[f"{dtype}_traces_per_s"] = round(analyzer_row["traces/s"], 1)
        summary[f"{dtype}_mb_per_s"] = round(analyzer_row["MB/s"], 1)
        summary[f"{dtype}_cores_for_10khz"] = round(analyzer_row["cores for 10 kHz"], 3)
        summary[f"{dtype}_consumer_traces_per_s"] = round(consumer_row["traces/s"], 1)
        summary[f"{dtype}_hits_per_trace"] = round(hits / SHOTS, 2)
    report(f"time-of-flight analysis, {SAMPLES}-sample traces (one core)", rows, summary, json_only)


if __name__ == "__main__":
    main(json_only="--json" in sys.argv)
