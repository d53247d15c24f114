"""Read rate of the ``psana`` source alone: XTC2 → Frames, no steps, serializer or handler.

Writes a run (default 300 events of 512×1024 float32, fakecam layout, like a JUNGFRAU module) with
``photonstream.testing.xtc2`` and reads it through the source several times; the page cache holds the file
after the first pass, so this measures psana and the source, not the disk.

    python -m benchmarks.psana_source [events] [repeats]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._report import machine, report
from photonstream.sources.base import registry


def read_once(path: Path, detector: str, copy_arrays: bool) -> tuple[float, int, int]:
    cls = registry.get("psana")
    source = cls(cls.Options(files=[str(path)], detector=detector, copy_arrays=copy_arrays))
    started = time.perf_counter()
    source.open()
    frames = nbytes = 0
    for frame in source.events():
        frames += 1
        nbytes += frame.arrays["data"].nbytes
    source.close()
    return time.perf_counter() - started, frames, nbytes


def main(events: int = 300, repeats: int = 5, json_only: bool = False) -> dict[str, Any]:
    from photonstream.testing.xtc2 import write_xtc2_run

    rows = []
    summary: dict[str, Any] = {"events": events, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as tmp:
        started = time.perf_counter()
        run = write_xtc2_run(Path(tmp) / "fakecam.xtc2", events, (512, 1024), np.float32, layout="fakecam")
        summary["write_s"] = round(time.perf_counter() - started, 2)
        summary["file_MB"] = round(run.path.stat().st_size / 1e6, 1)
        for copy_arrays in (False, True):
            results = [read_once(run.path, run.detector, copy_arrays) for _ in range(repeats)]
            seconds = [r[0] for r in results]
            frames, nbytes = results[0][1], results[0][2]
            case = "psana source, copied arrays" if copy_arrays else "psana source, zero-copy"
            row = {
                "case": case,
                "frames": frames,
                "median_frames_per_s": frames / statistics.median(seconds),
                "best_frames_per_s": frames / min(seconds),
                "median_MB_per_s": nbytes / statistics.median(seconds) / 1e6,
                "best_MB_per_s": nbytes / min(seconds) / 1e6,
            }
            rows.append(row)
            key = "copy" if copy_arrays else "zero_copy"
            summary[f"{key}_median_fps"] = round(row["median_frames_per_s"], 1)
            summary[f"{key}_median_MBps"] = round(row["median_MB_per_s"], 1)
    summary["machine"] = machine()
    report("psana source read rate (open + read, file in page cache)", rows, summary, json_only)
    return summary


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
