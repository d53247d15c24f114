"""``photonstream demo`` as a user runs it: a short run in a subprocess, its report, and nothing left running.

The CI's short version of the README's first command. The figures are checked against the run's own truth (the
synthetic source's hit fraction and ground truth), never against timings.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from photonstream.system_demo.processes import alive

HIT_FRACTION = 0.1


def run_demo(*args: str, timeout_s: float = 150.0) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "-m", "photonstream", "demo", "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "COLUMNS": "160"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no report (exit {result.returncode}): {result.stderr[-3000:]}"
    return result, json.loads(lines[-1])


def processes_of(session: int, path: str) -> list[int]:
    """Live processes in ``session`` or with ``path`` on their command line (the demo's temporary directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and (int(fields[3]) == session or path in command):
            found.append(int(entry.name))
    return found


def job_group_members(pgid: int | None) -> list[int]:
    if pgid is None:
        return []
    from photonstream.jobs._shepherd import group_members

    return group_members(pgid)


@pytest.mark.timeout(180)
def test_short_demo_reports_the_run_and_leaves_nothing_running() -> None:
    result, report = run_demo("--duration", "6", "--rate", "60")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["state"] == "completed"
    frames = report["frames_sent"]
    assert frames == 360 and report["frames_analysed"] == frames  # every frame reached the lossless group
    # the default is the detector; misses reach the workers as metadata + thumbnail (veto), hits whole
    assert report["detector"] == "epix10k2m"
    assert report["frames_whole"] + report["frames_vetoed"] == frames
    assert report["hits"] <= report["frames_whole"] < frames / 2
    # hit rate: a binomial count around 10 % (n = 360: ±3 standard deviations is about ±4.7 %)
    assert abs(report["hit_rate"] - HIT_FRACTION) < 0.05
    assert abs(report["hit_rate"] - report["true_hit_fraction"]) < 0.03
    assert report["indexing_rate"] >= 0.8
    assert report["cc"] is not None and report["cc"] > 0.5 and report["cc_reflections"] > 0
    assert 0 < report["first_frame_s"] <= report["first_result_s"] <= report["first_indexed_s"]
    assert report["end_to_end_fps"] > 0 and report["keeps_up"] is not None
    assert report["trainer"]["train_events"] + report["trainer"]["test_events"] == frames
    # the merger's figures reached the API's results channel (GET /v1/streams/{id}/results)
    channel = report["results_channel"]
    assert channel["kinds"].get("hit_rate", 0) >= 1 and channel["kinds"].get("indexing_rate", 0) >= 1
    assert channel["hit_rate"] == pytest.approx(report["hit_rate"], abs=1e-3)
    # statistics without truth and the structure: 1AKI refined against the merged data as the run went
    assert report["model"] == "1aki" and report["cc_half"] is not None and 0 < report["completeness"] <= 1
    assert report["structure_updates"] >= 1 and report["r_free"] < 0.45 and report["r_work"] < report["r_free"] + 0.05
    assert report["final_map_s"] is not None and 0 < report["final_map_s"] < 30
    # the newest structure update may still be on its way to the API when the report reads the results channel
    assert report["peak_map"] == "mFo-DFc" and 1 <= channel["kinds"].get("structure", 0) <= report["structure_updates"]
    # the human report on stderr names the figures
    for words in ("hit rate", "indexing rate", "merged CC", "request → first indexed", "nothing left running", "veto",
                  "CC½", "R-free", "final map"):  # fmt: skip
        assert words in result.stderr
    # nothing the demo started outlives it: its consumer processes and the job's process group
    processes = report["processes"]
    assert len(processes["consumers"]) == 5 and processes["job_process_group"] is not None
    assert processes["left"] == []
    assert [pid for pid in processes["consumers"] if alive(pid)] == []
    assert job_group_members(processes["job_process_group"]) == []
    assert report["workdir"] and not Path(report["workdir"]).exists()  # the temporary CA, state and logs


@pytest.mark.timeout(120)
def test_terminated_demo_stops_everything_it_started() -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "photonstream", "demo", "--duration", "60", "--rate", "30"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own session: every process of the demo but the job's is in it
        env={**os.environ, "COLUMNS": "400"},
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(demo.stderr or []), daemon=True)
    reader.start()
    deadline = time.monotonic() + 90
    while not any(" streaming " in line and " 0 analysed" not in line for line in lines):
        assert demo.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
        time.sleep(0.2)
    workdir = re.search(r"(/\S*photonstream-demo-[^/\s]+)/", "".join(lines))
    assert workdir, "".join(lines)[:2000]
    assert processes_of(demo.pid, workdir.group(1))  # the demo, its consumers and the job run
    demo.send_signal(signal.SIGTERM)
    assert demo.wait(60) != 0
    reader.join(10)
    assert "stopped everything the demo started: nothing left running" in "".join(lines)
    assert processes_of(demo.pid, workdir.group(1)) == []
    assert not Path(workdir.group(1)).exists()


def test_bad_option_fails_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "photonstream", "demo", "--detector", "pilatus"], capture_output=True, text=True
    )
    assert result.returncode != 0
    assert "--detector" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_demo_through_slurm() -> None:
    from tests.jobs.conftest import require_slurm

    require_slurm()
    result, report = run_demo("--backend", "slurm", "--duration", "4", "--rate", "40")
    assert result.returncode == 0, result.stderr[-3000:]
    assert report["state"] == "completed" and report["backend"] == "slurm"
    assert report["frames_sent"] == 160 and report["frames_analysed"] == 160
    assert report["indexing_rate"] >= 0.8 and report["first_indexed_s"] is not None
    assert report["processes"]["left"] == []
    assert [pid for pid in report["processes"]["consumers"] if alive(pid)] == []
    queue = subprocess.run(["squeue", "-h", "-j", str(report["job_id"])], capture_output=True, text=True, check=False)
    assert queue.stdout.strip() == ""
