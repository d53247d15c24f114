"""benchmarks/structure.py on a tiny run: every case is reported with figures that make sense (not its speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("cctbx")
pytest.importorskip("gemmi")

CODE = """
from benchmarks.structure import main
main(rounds=2, json_only=True, sizes=(30, 60), workers=(1, 2), worker_events=40)
"""


def test_a_tiny_run_reports_every_case_with_sane_figures() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["benchmark"] == "structure" and summary["rounds"] == 2 and summary["load_average_before"] >= 0
    small, large = summary["frames_30"], summary["frames_60"]
    assert 0 < small["reflections"] < large["reflections"]  # more frames, more reflections measured
    for case in (small, large):
        assert 0 < case["merge_s"] < case["structure_s"] and case["final_map_s"] > 0
        assert 0 < case["r_free"] < 0.6
    assert summary["workers_1"]["speedup_vs_1"] == 1.0 and summary["workers_2"]["frames_per_s"] > 0
    assert 0 < summary["workers_2"]["speedup_vs_1"] < 4
