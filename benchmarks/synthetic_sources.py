"""Generation rate of the synthetic sources and the hitfinder's rate on their frames, one core.

Frames are generated and dropped (as a pipeline with a ``null`` handler would); misses are background only, hits
are lysozyme stills at 2 Å. The hitfinder rows run on an ePix10k2M run with 20 % hits.

    python -m benchmarks.synthetic_sources [--json] [--eiger]
"""

from __future__ import annotations

import sys
import time
from typing import Any

from benchmarks._report import machine, report
from photonstream.processing.hitfinder import Hitfinder, HitfinderOptions, _peakfinder8
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions
from photonstream.sources.synthetic_tof import SyntheticTof, SyntheticTofOptions


def _rate(source: Any, events: int) -> float:
    source.open()
    source.frame(0)  # warm caches
    start = time.perf_counter()
    for index in range(events):
        source.frame(index)
    return events / (time.perf_counter() - start)


def main(json_only: bool = False, eiger: bool = False) -> None:
    rows: list[dict[str, Any]] = []
    summary: dict[str, Any] = {"machine": machine()}
    detectors = ["epix10k2m", "jungfrau4m"] + (["eiger16m"] if eiger else [])
    for detector in detectors:
        for label, fraction in (("misses", 0.0), ("hits", 1.0)):
            events = 20 if detector == "eiger16m" else 200
            src = SyntheticDiffraction(SyntheticDiffractionOptions(detector=detector, hit_fraction=fraction, seed=1))
            rate = _rate(src, events)
            rows.append({"case": f"{detector} {label}", "frames/s": rate})
            summary[f"{detector}_{label}_frames_per_s"] = round(rate, 1)
    tof = SyntheticTof(SyntheticTofOptions(channels=4, seed=1))
    rate = _rate(tof, 500)
    rows.append({"case": "synthetic-tof 4 x 10000 int16", "frames/s": rate})
    summary["tof_frames_per_s"] = round(rate, 1)

    source = SyntheticDiffraction(
        SyntheticDiffractionOptions(detector="epix10k2m", events=100, hit_fraction=0.2, seed=2)
    )
    source.open()
    frames = list(source.events())
    algorithms = ["numpy"] + (["peakfinder8"] if _peakfinder8() is not None else [])
    for algorithm in algorithms:
        step = Hitfinder(HitfinderOptions(algorithm=algorithm))
        count = 100 if algorithm == "numpy" else 20
        start = time.perf_counter()
        for frame in frames[:count]:
            step.apply(frame)
        rate = count / (time.perf_counter() - start)
        rows.append({"case": f"hitfinder {algorithm} on epix10k2m", "frames/s": rate})
        summary[f"hitfinder_{algorithm}_frames_per_s"] = round(rate, 1)
    report("synthetic sources and hitfinder (one core)", rows, summary, json_only)


if __name__ == "__main__":
    main(json_only="--json" in sys.argv, eiger="--eiger" in sys.argv)
