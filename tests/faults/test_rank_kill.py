"""kill -9 of one MPI rank of ``mpirun -n 3 photonstream run`` writing to the buffer.

What the user sees: the launcher reports the killed rank and ends the others (MPICH: "BAD TERMINATION"), and
``mpirun`` exits non-zero. The stream must never end ``completed``; every frame the buffer stored reaches the
lossless group's application once; and the consumers must not hang, which needs someone to end the stream
``failed`` (pinned below as a known gap).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.buffer.support import start_service, stream_state
from tests.faults.support import (
    Finished,
    Tally,
    finish,
    frames_done,
    pipeline_yaml,
    report,
    start_pipeline,
    start_worker,
    tally,
    wait_for,
)
from tests.stream_worker import read_records

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

STREAM = "faults/6/det"


def mpirun() -> str:
    pytest.importorskip("mpi4py")
    for candidate in (Path(sys.prefix) / "bin" / "mpirun", shutil.which("mpirun")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("mpirun not found (pip install mpich)")


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The PID of MPI rank ``rank`` under the launcher (by the PMI_RANK / OMPI rank variable it got)."""
    wanted = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid in descendants(launcher_pid):
        with contextlib.suppress(OSError):
            variables = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            if variables & wanted and b"photonstream" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


@dataclass
class Outcome:
    launched: Finished
    stream: dict[str, Any]
    stored: int
    counts: Tally
    worker_summary: dict[str, Any] | None


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    launcher = mpirun()
    root = tmp_path_factory.mktemp("rank-kill")
    service = start_service(member_timeout_s=2.0)
    worker = run = None
    try:
        out = root / "worker.jsonl"
        worker = start_worker(service.endpoint, STREAM, out, "--credit", "8", "--timeout-s", "30")
        config = pipeline_yaml(root / "p.yaml", service.endpoint, run=6, events=600, rate_hz=30.0)
        run = start_pipeline(config, launcher, "-n", "3")
        wait_for(lambda: frames_done(out) >= 10, 60, "the worker to read ten frames")
        victim = wait_for(lambda: rank_pid(run.pid, 1), 10, "rank 1's process")
        os.kill(victim, signal.SIGKILL)
        launched = finish(run, "mpirun after a rank was killed", 30)
        stream = stream_state(service.endpoint, STREAM)
        stored = int(stream["head"])
        wait_for(lambda: frames_done(out) >= stored, 20, "the worker to read every stored frame")
        with contextlib.suppress(AssertionError):  # a worker that gets no end message is stopped after 5 s
            finish(worker, "the worker", 5)
        yield Outcome(launched, stream, stored, tally(stored, out), read_records(out)[1])
    finally:
        for process in (worker, run):
            if process is not None and process.poll() is None:
                process.kill()
        service.stop()


def test_a_killed_rank_fails_the_run_and_no_stored_frame_is_lost_or_repeated(outcome: Outcome) -> None:
    summary = outcome.worker_summary or {}
    said = (outcome.launched.out + outcome.launched.err).strip()[-300:]
    report("rank_kill9", mpirun_exit=outcome.launched.rc, lost=outcome.counts.lost,
           duplicates=outcome.counts.duplicates, stored=outcome.stored, stream_ended=outcome.stream["ended"],
           consumer_end=summary.get("end_reason"), mpirun_says=said)  # fmt: skip
    assert outcome.launched.rc != 0
    assert outcome.stored >= 10
    assert outcome.counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application
    assert summary.get("end_reason") != "completed"  # never completed


@pytest.mark.xfail(
    strict=True,
    reason="known gap: when an MPI rank dies the launcher kills the others (rank 0 included), so no end message "
    "reaches the buffer and its consumers wait forever; the job's failed state must end the stream in the buffer "
    "with reason 'failed' (integration: job-state callbacks), or the buffer must end a stream whose producers "
    "all vanished",
)
def test_after_a_killed_rank_the_consumers_get_a_failed_end(outcome: Outcome) -> None:
    assert outcome.worker_summary is not None, "the worker got no end message within 5 s"
    assert outcome.worker_summary["end_reason"] == "failed"
