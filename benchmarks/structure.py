"""From indexed stills to a structure: how long the merger's update and the structure stage's update take as the
run grows, how long after the last frame the final map is written, and crystallography frames/s with 1, 2, 4
workers.

Data: synthetic stills of lysozyme (the bundled 1AKI model, P2₁2₁2₁) on the small 4-module detector to 2.5 Å,
every frame a hit, processed once by the real worker code (spots, indexing, integration, per-frame scale) in this
process; the results are then fed to a ``Merger`` and its snapshots to a ``StructureStage`` (French–Wilson,
bulk-solvent scaling, rigid body in the first update, grouped B, maps, peaks, files), exactly what the processes do,
without the sockets. Per frame count, interleaved rounds (every size once per round, ``--rounds`` rounds): the
merger's ``report()`` (shell table, curves, CC½) and a later (not the first: no rigid body) structure update; the
median over rounds is shown. "last frame → final map" is the merger's final report, the snapshot's packing and
unpacking, and the stage's update of all frames: what follows the last result in a live run, less the transport.

Workers: ``run_local`` with N worker processes over a prefilled buffer (the run is in the buffer before the workers
start, so making frames takes no CPU from them); frames/s = events / (first → last result at the merger). The
speed-up of N workers is the median over rounds of (N-worker rate / 1-worker rate) of the same round; the rounds
interleave 1, 2, 4. This machine's cores bound it (more workers than cores share them); the load average is shown.

    python -m benchmarks.structure [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import photonstream.consumers.structure  # noqa: F401  (cctbx first)
from benchmarks._report import machine, report

DETECTOR = {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
            "module_gap_px": 6, "resolution_limit_a": 2.5, "spot_photons": 300.0}  # fmt: skip
SIZES = (100, 200, 400)
WORKERS = (1, 2, 4)
WORKER_EVENTS = 240


def indexed_results(events: int, seed: int = 7) -> tuple[list[dict[str, Any]], tuple[tuple[float, ...], str]]:
    """Each frame's worker result for ``events`` 1AKI stills, and the run's (cell, space group)."""
    from photonstream.consumers.xtal.worker import XtalOptions, XtalProcessor
    from photonstream.frames import StartMessage
    from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions

    options = SyntheticDiffractionOptions(**DETECTOR, events=events, hit_fraction=1.0, seed=seed, model="1aki")
    source = SyntheticDiffraction(options)
    info = source.open()
    start = StartMessage(stream_id="bench", geometry=info.geometry, source=info.details)
    processor = XtalProcessor(start, XtalOptions())
    results = [processor.process(frame) for frame in source.events()]
    return results, (tuple(source.cell.as_tuple()), str(info.details.get("space_group", "P212121")))


def merger_of(results: list[dict[str, Any]], symmetry: tuple[tuple[float, ...], str]) -> Any:
    from photonstream.consumers.xtal.merge import Merger

    merger = Merger(symmetry=symmetry)
    for result in results:
        merger.add(result)
    return merger


def snapshot(merger: Any, symmetry: tuple[tuple[float, ...], str], final: bool) -> dict[str, Any]:
    from photonstream.consumers.xtal._wire import pack, unpack
    from photonstream.consumers.xtal.to_structure import snapshot_record

    cell, space_group = symmetry
    record = snapshot_record({"all": merger.merged()}, {"unit_cell": cell, "space_group": space_group},
                             frames=merger.frames, indexed=merger.indexed, final=final)  # fmt: skip
    return dict(unpack(pack(record)))


def update_times(results: list[dict[str, Any]], symmetry: tuple[tuple[float, ...], str], size: int,
                 folder: Path) -> dict[str, float]:  # fmt: skip
    from photonstream.consumers.structure.stage import StructureStage

    merger = merger_of(results[:size], symmetry)
    began = time.perf_counter()
    merger.report()
    merge_s = time.perf_counter() - began
    stage = StructureStage("1aki", folder)
    stage.update(snapshot(merger, symmetry, final=False))  # the first update (rigid body) is not timed
    began = time.perf_counter()
    summary = stage.update(snapshot(merger, symmetry, final=True))
    structure_s = time.perf_counter() - began
    final_stage = StructureStage("1aki", folder)
    final_stage.updates = 1  # a placed model, as in a live run's final update
    began = time.perf_counter()
    merger.report()
    final_stage.update(snapshot(merger, symmetry, final=True))
    return {"merge_s": merge_s, "structure_s": structure_s, "final_map_s": time.perf_counter() - began,
            "reflections": summary["reflections"], "r_free": summary["r_free"], "indexed": merger.indexed}  # fmt: skip


def workers_rate(workers: int, events: int) -> float:
    from photonstream.consumers.xtal.local import run_local

    source = {"type": "synthetic-diffraction", **DETECTOR, "events": events, "hit_fraction": 0.8, "seed": 5,
              "model": "1aki"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-structure-") as folder:
        run = run_local(source, workers, Path(folder), report_every=100_000, prefill=True)
    return float(run.events / run.document["results_window_s"])


def main(rounds: int = 3, json_only: bool = False, sizes: tuple[int, ...] = SIZES,
         workers: tuple[int, ...] = WORKERS, worker_events: int = WORKER_EVENTS) -> None:  # fmt: skip
    load_before = os.getloadavg()
    results, symmetry = indexed_results(max(sizes))
    per_size: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    with tempfile.TemporaryDirectory(prefix="bench-structure-") as folder:
        for _ in range(rounds):
            for size in sizes:
                per_size[size].append(update_times(results, symmetry, size, Path(folder) / str(size)))
    rates: dict[int, list[float]] = {n: [] for n in workers}
    for _ in range(rounds):
        for n in workers:
            rates[n].append(workers_rate(n, worker_events))
    first = workers[0]
    speedups = {n: statistics.median(rates[n][r] / rates[first][r] for r in range(rounds)) for n in workers}
    load_after = os.getloadavg()

    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"benchmark": "structure", "machine": machine(), "rounds": rounds,
                               "load_average_before": load_before[0], "load_average_after": load_after[0]}  # fmt: skip
    for size in sizes:
        runs = per_size[size]
        medians = {key: statistics.median(run[key] for run in runs) for key in ("merge_s", "structure_s",
                                                                                 "final_map_s")}  # fmt: skip
        rows.append({"case": f"{size} frames", "indexed": int(runs[0]["indexed"]),
                     "reflections": int(runs[0]["reflections"]), "merge update ms": 1000 * medians["merge_s"],
                     "structure update s": medians["structure_s"], "last frame → final map s": medians["final_map_s"],
                     "R-free": runs[0]["r_free"]})  # fmt: skip
        summary[f"frames_{size}"] = {"reflections": int(runs[0]["reflections"]), "r_free": runs[0]["r_free"],
                                     **{key: round(value, 4) for key, value in medians.items()}}  # fmt: skip
    for n in workers:
        rows.append({"case": f"{n} worker(s)", "indexed": None, "reflections": None, "merge update ms": None,
                     "structure update s": None, "last frame → final map s": None, "R-free": None,
                     "frames/s": statistics.median(rates[n]), f"speed-up vs {first}": speedups[n]})  # fmt: skip
        summary[f"workers_{n}"] = {"frames_per_s": round(statistics.median(rates[n]), 2),
                                   f"speedup_vs_{first}": round(speedups[n], 3)}  # fmt: skip
    for row in rows:
        row.setdefault("frames/s", None)
        row.setdefault(f"speed-up vs {first}", None)
    title = (f"structure: merge and structure updates, final map, workers ({rounds} interleaved rounds, medians; "
             f"load average {load_before[0]:.2f} → {load_after[0]:.2f} on {os.cpu_count()} cores)")  # fmt: skip
    report(title, rows, summary, json_only)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    arguments = parser.parse_args()
    main(rounds=arguments.rounds, json_only=arguments.json)
