"""Local backend: the queue, time limits, the SIGKILL escalation, MPI ranks, and re-adoption by a new backend."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from photonstream.jobs import _shepherd
from photonstream.jobs.base import JobSpec, JobState, Resources
from photonstream.jobs.local import SHEPHERD, LocalBackend, find_mpirun
from tests.jobs.conftest import process_alive, wait_until

PATIENCE_S = 15


def spec(workdir: Path, name: str, script: str, **resources: int) -> JobSpec:
    return JobSpec(name=name, command=["sh", "-c", script], workdir=str(workdir), resources=Resources(**resources))


def wait_state(backend: LocalBackend, job_id: str, *states: JobState):
    wait_until(lambda: backend.status(job_id).state in states, PATIENCE_S, f"job {job_id} to be {states}")
    return backend.status(job_id)


def wait_finished(backend: LocalBackend, job_id: str):
    return wait_state(backend, job_id, *(state for state in JobState if state.finished))


@pytest.fixture
def backend(tmp_path: Path):
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=1, cancel_grace_s=0.5, poll_interval_s=0.05)
    yield backend
    with sqlite3.connect(tmp_path / "state" / "local-jobs.sqlite3") as db:
        running = [row[0] for row in db.execute("SELECT id FROM jobs WHERE state IN ('running', 'pending')")]
    for job_id in running:
        backend.cancel(job_id)
    backend.close()


def test_jobs_beyond_the_limit_wait_pending_then_start_in_order(backend: LocalBackend, tmp_path: Path) -> None:
    first_go, second_ran = tmp_path / "go", tmp_path / "second-ran"
    first = backend.submit(spec(tmp_path, "first", f"while [ ! -e {first_go} ]; do sleep 0.05; done"))
    second = backend.submit(spec(tmp_path, "second", f"touch {second_ran}"))

    assert backend.status(first).state == JobState.RUNNING
    queued = backend.status(second)
    assert queued.state == JobState.PENDING
    assert "1 jobs may run at once" in queued.reason
    assert not second_ran.exists()

    first_go.touch()
    assert wait_finished(backend, second).state == JobState.COMPLETED
    assert second_ran.exists()
    assert backend.status(first).state == JobState.COMPLETED


def test_cancelling_a_pending_job_means_it_never_starts(backend: LocalBackend, tmp_path: Path) -> None:
    blocker = backend.submit(spec(tmp_path, "blocker", "exec sleep 300"))
    marker = tmp_path / "should-not-exist"
    queued = backend.submit(spec(tmp_path, "queued", f"touch {marker}"))

    backend.cancel(queued)
    backend.cancel(blocker)

    assert backend.status(queued).state == JobState.CANCELLED
    assert backend.status(blocker).state == JobState.CANCELLED
    assert not marker.exists()


def test_time_limit_stops_the_job_and_fails_it(backend: LocalBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job_id = backend.submit(spec(tmp_path, "slow", f"echo $$ > {pid_file}; exec sleep 300", time_limit_s=1))

    status = wait_finished(backend, job_id)

    assert status.state == JobState.FAILED
    assert "time limit of 1 s exceeded" in status.reason
    wait_until(lambda: not process_alive(int(pid_file.read_text())), PATIENCE_S, "the job's process to end")


def test_a_job_ignoring_sigterm_is_killed_after_the_grace(backend: LocalBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job_id = backend.submit(
        spec(tmp_path, "stubborn", f"trap '' TERM; echo $$ > {pid_file}; while :; do sleep 0.05; done")
    )
    wait_until(pid_file.exists, PATIENCE_S, "the PID file")
    group = backend.process_group(job_id)
    assert group is not None

    backend.cancel(job_id)

    assert backend.status(job_id).state == JobState.CANCELLED
    assert not process_alive(int(pid_file.read_text()))
    assert _shepherd.group_members(group) == []


def test_background_processes_left_by_a_finished_job_are_stopped(backend: LocalBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job_id = backend.submit(spec(tmp_path, "leaves-child", f"sleep 300 & echo $! > {pid_file}; echo done"))

    assert wait_finished(backend, job_id).state == JobState.COMPLETED
    wait_until(lambda: not process_alive(int(pid_file.read_text())), PATIENCE_S, "the background sleep to end")


def test_workdir_and_environment_reach_the_command(backend: LocalBackend, tmp_path: Path) -> None:
    workdir = tmp_path / "new" / "dir"
    job = JobSpec(
        name="env",
        command=["sh", "-c", 'echo "$PWD $GREETING"'],
        workdir=str(workdir),
        environment={"GREETING": "hi there"},
    )

    job_id = backend.submit(job)

    assert wait_finished(backend, job_id).state == JobState.COMPLETED
    assert backend.logs(job_id) == f"{workdir} hi there\n"
    assert (workdir / "env.log").exists()


def test_missing_command_fails_with_a_reason(backend: LocalBackend, tmp_path: Path) -> None:
    job = JobSpec(name="missing", command=["/no/such/program"], workdir=str(tmp_path))
    status = wait_finished(backend, backend.submit(job))
    assert status.state == JobState.FAILED
    assert status.exit_code == 127
    assert "cannot run '/no/such/program'" in status.reason


@pytest.mark.skipif(find_mpirun() is None, reason="no mpirun (pip install mpich)")
def test_ranks_run_under_mpirun(backend: LocalBackend, tmp_path: Path) -> None:
    job_id = backend.submit(spec(tmp_path, "mpi", 'echo "rank $PMI_RANK of $PMI_SIZE"', ranks=2))
    assert wait_finished(backend, job_id).state == JobState.COMPLETED
    assert sorted(backend.logs(job_id).splitlines()) == ["rank 0 of 2", "rank 1 of 2"]


def test_a_new_backend_adopts_a_running_job_and_can_cancel_it(backend: LocalBackend, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    job_id = backend.submit(spec(tmp_path, "adopted", f"echo $$ > {pid_file}; exec sleep 300"))
    wait_until(pid_file.exists, PATIENCE_S, "the PID file")
    backend.close()

    after_restart = LocalBackend(state_dir=backend.state_dir, cancel_grace_s=0.5)
    assert after_restart.status(job_id).state == JobState.RUNNING
    after_restart.cancel(job_id)

    assert after_restart.status(job_id).state == JobState.CANCELLED
    assert backend.status(job_id).state == JobState.CANCELLED
    assert not process_alive(int(pid_file.read_text()))


def test_a_new_backend_learns_the_exit_code_of_a_job_it_did_not_start(backend: LocalBackend, tmp_path: Path) -> None:
    go = tmp_path / "go"
    job_id = backend.submit(spec(tmp_path, "ends-later", f"while [ ! -e {go} ]; do sleep 0.05; done; exit 4"))
    wait_state(backend, job_id, JobState.RUNNING)
    backend.close()

    after_restart = LocalBackend(state_dir=backend.state_dir)
    go.touch()
    status = wait_finished(after_restart, job_id)

    assert status.state == JobState.FAILED
    assert status.exit_code == 4


def test_a_job_whose_processes_vanished_is_lost_not_running(backend: LocalBackend, tmp_path: Path) -> None:
    job_id = backend.submit(spec(tmp_path, "vanishes", "exec sleep 300"))
    group = backend.process_group(job_id)
    assert group is not None
    os.killpg(group, signal.SIGKILL)  # shepherd included: no exit record is written
    wait_until(lambda: not process_alive(group), PATIENCE_S, "the killed shepherd to end")

    status = LocalBackend(state_dir=backend.state_dir).status(job_id)

    assert status.state == JobState.LOST
    assert "without recording an exit status" in status.reason


def test_a_reused_pid_is_not_taken_for_the_job(backend: LocalBackend, tmp_path: Path) -> None:
    job_id = backend.submit(spec(tmp_path, "done", "true"))
    wait_finished(backend, job_id)
    me = _shepherd.process_info(os.getpid())
    assert me is not None
    # pretend the job still ran with this test's PID, but a different start time: a PID reused by another process
    with sqlite3.connect(backend.state_dir / "local-jobs.sqlite3") as db:
        db.execute(
            "UPDATE jobs SET state = 'running', pid = ?, start_ticks = ? WHERE id = ?",
            (me.pid, me.start_ticks - 1, job_id),
        )

    after_restart = LocalBackend(state_dir=backend.state_dir)
    assert after_restart.status(job_id).state == JobState.LOST
    after_restart.cancel(job_id)  # must not signal this test process
    assert process_alive(os.getpid())


def test_the_shepherd_never_signals_the_group_it_was_started_in(tmp_path: Path) -> None:
    # run directly, not in a new session: cleaning up its job must not reach this test process's group
    log, exit_file = tmp_path / "log", tmp_path / "exit.json"
    options = ["--log", str(log), "--exit-file", str(exit_file), "--time-limit", "30", "--grace", "0.5"]
    command = ["sh", "-c", "sleep 300 & echo $!"]
    completed = subprocess.run([sys.executable, "-I", "-S", str(SHEPHERD), *options, "--", *command], timeout=30)

    assert completed.returncode == 0
    assert json.loads(exit_file.read_text())["exit_code"] == 0
    left_behind = int(log.read_text())
    wait_until(lambda: not process_alive(left_behind), PATIENCE_S, "the background sleep to end")
