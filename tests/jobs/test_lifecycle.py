"""The same job lifecycle on every backend: local, slurm (a real one-node cluster) and sfapi (the stand-in)."""

from __future__ import annotations

import pytest

from photonstream.jobs.base import JobBackend, JobState
from photonstream.jobs.common import JobNotFoundError
from tests.jobs.conftest import Harness, process_alive, wait_until


def test_backend_satisfies_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.backend, JobBackend)


def test_job_runs_then_completes_with_its_logs(harness: Harness) -> None:
    go = harness.workdir / "go"
    job_id = harness.submit("greet", f"echo hello-from-job; while [ ! -e {go} ]; do sleep 0.05; done; echo bye")

    harness.wait_for(job_id, JobState.RUNNING)
    wait_until(lambda: "hello-from-job" in harness.backend.logs(job_id), harness.patience_s, "the first line")
    go.touch()
    status = harness.wait_finished(job_id)

    assert status.state == JobState.COMPLETED, status
    assert status.exit_code == 0
    assert harness.backend.logs(job_id) == "hello-from-job\nbye\n"
    assert harness.backend.logs(job_id, tail_lines=1) == "bye\n"


def test_failing_command_fails_with_reason_and_log_tail(harness: Harness) -> None:
    job_id = harness.submit("fail", "echo first-line; echo the-error-detail >&2; exit 3")

    status = harness.wait_finished(job_id)

    assert status.state == JobState.FAILED, status
    assert status.exit_code == 3
    assert "exit code 3" in status.reason
    assert "the-error-detail" in status.reason
    assert harness.backend.logs(job_id, tail_lines=1) == "the-error-detail\n"


def test_cancel_stops_the_job_and_its_processes(harness: Harness) -> None:
    pid_file = harness.workdir / "pid"
    job_id = harness.submit("endless", f"echo $$ > {pid_file}.tmp; mv {pid_file}.tmp {pid_file}; exec sleep 300")
    harness.wait_for(job_id, JobState.RUNNING)
    wait_until(pid_file.exists, harness.patience_s, "the job to write its PID")
    pid = int(pid_file.read_text())
    assert process_alive(pid)

    harness.backend.cancel(job_id)

    status = harness.wait_finished(job_id)
    assert status.state == JobState.CANCELLED, status
    wait_until(lambda: not process_alive(pid), harness.patience_s, f"process {pid} to end")


def test_unknown_job_is_reported_as_not_found(harness: Harness) -> None:
    with pytest.raises(JobNotFoundError):
        harness.backend.status("987654321")
