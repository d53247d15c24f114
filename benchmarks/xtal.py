"""Crystallography consumer speed: per-stage frames/s on one core, and a distributed run with 1 vs 2 workers.

Stages (one process, one core): hit finding on every frame (hits and misses), and on hits spot finding, indexing
(the numpy known-cell ``pairs`` search and cctbx's ``dps`` FFT search + force_cell) and integration with the ASU
reduction. Two detectors: the small 4-module test detector (4 × 192 × 192, 200 µm, 3 Å) and an ePix10k2M
(16 × 352 × 384, 100 µm, lysozyme to 2 Å). The stage timings run in a child process that imports cctbx first
(see ``photonstream.consumers.xtal._cctbx``).

Distributed: ``run_local`` with the small detector, 600 events at 80 % hits, the run put into the buffer first (so
generating frames does not take CPU from the workers), then N worker processes (one work-sharing group) → merger.
Throughput = events / (first → last result at the merger); the end-to-end time includes process start-up
(imports of cctbx, pyFAI: a few seconds). Live (not prefilled) runs share this machine's two cores with the
producer and the buffer.

    python -m benchmarks.xtal [--json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report

SMALL = {
    "detector": "custom",
    "shape": [4, 192, 192],
    "pixel_size_m": 200e-6,
    "module_grid": [2, 2],
    "module_gap_px": 6,
    "resolution_limit_a": 3.0,
    "spot_photons": 300.0,
}
EPIX = {"detector": "epix10k2m", "resolution_limit_a": 2.0, "spot_photons": 300.0}
DISTRIBUTED_EVENTS = 600


def stage_rates(detector: dict[str, Any], hits: int, dps_frames: int) -> dict[str, float]:
    """Frames/s of each stage on ``hits`` hit frames (and as many misses for hit finding); run in a child."""
    from photonstream.consumers.xtal.worker import XtalOptions, XtalProcessor
    from photonstream.frames import StartMessage
    from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions

    source = SyntheticDiffraction(SyntheticDiffractionOptions(**detector, events=2 * hits, hit_fraction=0.5, seed=3))
    info = source.open()
    frames = list(source.events())
    start = StartMessage(stream_id="bench", geometry=info.geometry, source=info.details)
    processor = XtalProcessor(start, XtalOptions())
    dps = XtalProcessor(start, XtalOptions(indexing="dps"))
    timings: dict[str, list[float]] = {"hit": [], "spots": [], "index": [], "integrate": []}
    indexed = true_hits = 0
    for frame in frames:
        result = processor.process(frame)
        true_hits += bool(frame.metadata["true_hit"])
        indexed += bool(frame.metadata["true_hit"]) and result["indexed"]
        for stage, seconds in result["seconds"].items():
            timings[stage].append(seconds)
    dps_seconds: list[float] = []
    hit_frames = [f for f in frames if f.metadata["true_hit"]][:dps_frames]
    for frame in hit_frames:
        result = dps.process(frame)
        dps_seconds.append(result["seconds"].get("index", 0.0))
    rates = {f"{stage}_frames_per_s": len(values) / sum(values) for stage, values in timings.items() if values}
    rates["index_dps_frames_per_s"] = len(dps_seconds) / sum(dps_seconds) if dps_seconds else 0.0
    rates["indexing_rate"] = indexed / true_hits if true_hits else 0.0
    return rates


def _stages_in_child() -> dict[str, dict[str, float]]:
    code = (
        "import json, photonstream.consumers.xtal\n"
        "from benchmarks.xtal import stage_rates, SMALL, EPIX\n"
        "print(json.dumps({'small': stage_rates(SMALL, 60, 5), 'epix10k2m': stage_rates(EPIX, 12, 2)}))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"stage benchmark failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def distributed(workers: int) -> dict[str, Any]:
    from photonstream.consumers.xtal.local import run_local

    source = {"type": "synthetic-diffraction", **SMALL, "events": DISTRIBUTED_EVENTS, "hit_fraction": 0.8, "seed": 11}
    with tempfile.TemporaryDirectory() as folder:
        run = run_local(source, workers, Path(folder), report_every=0, prefill=True)
    worker_seconds = [sum(w["seconds"].values()) for w in run.workers]
    window = run.document["results_window_s"]
    return {
        "events_per_s": run.events / window,
        "results_window_s": window,
        "with_startup_s": run.seconds,
        "busiest_worker_s": max(worker_seconds),
        "frames_per_worker": [w["frames"] for w in run.workers],
        "indexing_rate": run.document["report"]["indexing_rate"],
        "cc_reference": run.document["report"]["cc_reference"],
    }


def main(json_only: bool = False) -> None:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"machine": machine()}
    for detector, rates in _stages_in_child().items():
        for stage in ("hit", "spots", "index", "index_dps", "integrate"):
            value = rates.get(f"{stage}_frames_per_s", 0.0)
            rows.append({"case": f"{detector}: {stage.replace('_', ' ')} (1 core)", "frames/s": value, "note": ""})
            summary[f"{detector}_{stage}_frames_per_s"] = round(value, 2)
        summary[f"{detector}_indexing_rate"] = round(rates["indexing_rate"], 3)
    for workers in (1, 2):
        result = distributed(workers)
        note = f"indexing rate {result['indexing_rate']}, CC {result['cc_reference']}"
        rows.append({"case": f"distributed, {workers} worker(s)", "frames/s": result["events_per_s"], "note": note})
        for key, value in result.items():
            summary[f"distributed_{workers}w_{key}"] = round(value, 3) if isinstance(value, float) else value
        summary[f"distributed_{workers}w_events_per_s_end_to_end"] = round(
            DISTRIBUTED_EVENTS / result["with_startup_s"], 2
        )
    speedup = summary["distributed_2w_events_per_s"] / summary["distributed_1w_events_per_s"]
    summary["distributed_speedup_2_over_1"] = round(speedup, 2)
    report("xtal consumer: stages per core and distributed throughput", rows, summary, json_only)


if __name__ == "__main__":
    main(json_only="--json" in sys.argv)
