"""The whole system end to end: ``photonstream demo`` measured (``photonstream bench e2e``).

One case per detector (default: the ePix10k2M, the demo's own): the demo's request (synthetic serial
crystallography, ~10 % hits, at ``rate_hz`` for ``duration_s``; hit finder on every frame, misses vetoed to
metadata + thumbnail, hit images bitshuffle-LZ4, see ``photonstream.system_demo.run.stream_request``) through the
API over HTTPS to the local job, the buffer, two crystallography workers and their merger, a hit-classifier
trainer and a monitor group. Figures:

- request → first frame: the user's POST until the first frame reached a consumer (job start-up included);
- request → first indexed result: until the merger had the first indexed hit;
- sustained frames/s end to end: frames analysed / (first frame created by the pipeline → last result merged);
- keeps up: acquisition reached the asked rate (``rate_reached``: at least ``ACQUISITION_TOLERANCE`` of it, every
  asked frame sent; else generating frames was the bottleneck) and analysis kept pace with it (every frame
  analysed, the last result at most ``KEEP_UP_DRAIN_S`` after the last frame; ``drain_s`` is that delay): see
  ``photonstream.system_demo.verdict``.

    python -m benchmarks.e2e [--json]
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks._report import machine, report

CASES = ("epix10k2m",)


def case(detector: str, rate_hz: float, duration_s: float) -> dict[str, Any]:
    from rich.console import Console

    from photonstream.system_demo.run import DemoOptions, run_system_demo

    options = DemoOptions(duration_s=duration_s, rate_hz=rate_hz, detector=detector, show_progress=False)
    result = run_system_demo(options, Console(stderr=True, quiet=True))
    return {
        "case": f"{detector} {rate_hz:g} Hz",
        "frames": result.frames_analysed,
        "first_frame_s": result.first_frame_s,
        "first_indexed_s": result.first_indexed_s,
        "acquisition_fps": result.acquisition_fps,
        "rate_reached": result.rate_reached,
        "end_to_end_fps": result.end_to_end_fps,
        "drain_s": result.drain_s,
        "keeps_up": result.keeps_up,
        "indexing_rate": result.indexing_rate,
        "frames_whole": result.frames_whole,
        "cc": result.cc,
        "left_running": len(result.processes.get("left") or []),
    }


def main(
    json_only: bool = False, duration_s: float = 20.0, rate_hz: float = 120.0, detectors: tuple[str, ...] = CASES
) -> dict[str, Any]:
    rows = [case(detector, rate_hz, duration_s) for detector in detectors]
    summary: dict[str, Any] = {"duration_s": duration_s, "rate_hz": rate_hz, "machine": machine()}
    for row in rows:
        name = row["case"].split()[0]
        for key in ("first_frame_s", "first_indexed_s", "end_to_end_fps", "keeps_up", "rate_reached", "drain_s"):
            summary[f"{name}_{key}"] = row[key]
    report("photonstream bench e2e", rows, summary, json_only)
    return summary


if __name__ == "__main__":
    main(json_only="--json" in sys.argv[1:])
