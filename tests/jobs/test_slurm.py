"""Slurm backend: batch scripts and state mapping (no cluster needed); arrays and ranks on a real cluster."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from photonstream.errors import ConfigError
from photonstream.jobs.base import JobSpec, JobState, Resources
from photonstream.jobs.slurm import (
    SlurmBackend,
    SlurmJobRow,
    array_batch_script,
    batch_script,
    exit_code_of,
    job_state_of,
    job_status_from_slurm,
    parse_rows,
)
from tests.jobs.conftest import wait_until


def sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH --"):
            key, _, value = line.removeprefix("#SBATCH --").partition("=")
            options[key] = value
    return options


def test_batch_script_carries_every_resource() -> None:
    spec = JobSpec(
        name="stream-7",
        command=["photonstream", "run", "pipe line.yaml"],
        workdir="/scratch/run7",
        environment={"OMP_NUM_THREADS": "4", "NOTE": "it's $HOME"},
        resources=Resources(
            nodes=2,
            ranks=8,
            cores_per_rank=4,
            memory_mb=16000,
            time_limit_s=90061,
            partition="debug",
            qos="realtime",
            account="m1234",
        ),
    )

    script = batch_script(spec)

    assert script.startswith("#!/bin/bash\n")
    assert sbatch_options(script) == {
        "job-name": "stream-7",
        "nodes": "2",
        "ntasks": "8",
        "cpus-per-task": "4",
        "time": "1-01:01:01",
        "mem": "16000M",
        "partition": "debug",
        "qos": "realtime",
        "account": "m1234",
        "output": "/scratch/run7/stream-7.log",
        "chdir": "/scratch/run7",
    }
    assert "export OMP_NUM_THREADS=4\n" in script
    assert "export NOTE='it'\"'\"'s $HOME'\n" in script
    assert script.endswith("exec srun --ntasks=8 --cpus-per-task=4 photonstream run 'pipe line.yaml'\n")


def test_single_rank_runs_without_srun_and_arrays_get_per_task_logs() -> None:
    spec = JobSpec(
        name="workers",
        command=["worker"],
        workdir="/w",
        log_path="logs/w%1.log",
        resources=Resources(array=4),
    )
    script = batch_script(spec)
    options = sbatch_options(script)
    assert options["array"] == "0-3"
    assert options["output"] == "/w/logs/w%%1-%a.log"  # a literal % doubled, %a the task index
    assert script.endswith("exec worker\n")


def test_an_array_script_gives_each_task_its_own_command_environment_and_log() -> None:
    specs = [
        JobSpec(name=f"pool-w-{i}", command=["worker", f"w {i}"], environment={"WORKER": f"w-{i}"}, workdir="/w")
        for i in range(2)
    ]
    script = array_batch_script("pool-w-array0", specs, ["/w/pool-w-0.log", "/w/pool-w-1.log"])
    options = sbatch_options(script)
    assert (options["array"], options["job-name"]) == ("0-1", "pool-w-array0")
    assert options["output"] == "/w/pool-w-array0-%a.log"  # what Slurm says before a task redirects
    cases = script.split('case "$SLURM_ARRAY_TASK_ID" in\n')[1].split("    ;;\n")
    for task, case in enumerate(cases[:2]):
        lines = case.splitlines()
        assert lines[:3] == [f"{task})", f"    exec >/w/pool-w-{task}.log 2>&1", f"    export WORKER=w-{task}"]
        assert lines[-1] == f"    exec worker 'w {task}'"
    assert cases[2].startswith("*)\n")  # an unknown task index fails, it does not run another task's command
    assert script.endswith("esac\n")
    with pytest.raises(ConfigError, match="differs from pool-w-0 in resources"):
        other = specs[1].model_copy(update={"resources": Resources(cores_per_rank=2)})
        array_batch_script("pool-w-array0", [specs[0], other], ["/w/a.log", "/w/b.log"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"workdir": "/has space"}, "whitespace"),
        ({"resources": Resources(partition="debug\n#SBATCH --qos=high")}, "not a valid Slurm name"),
        ({"environment": {"BAD-NAME": "1"}}, "environment variable name"),
    ],
)
def test_batch_script_refuses_what_would_break_the_script(change: dict, message: str) -> None:
    spec = JobSpec(name="x", command=["true"], workdir="/w").model_copy(update=change)
    with pytest.raises(ConfigError, match=message):
        batch_script(spec)


@pytest.mark.parametrize(
    ("slurm_state", "expected"),
    [
        ("PENDING", JobState.PENDING),
        ("CONFIGURING", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("COMPLETING", JobState.RUNNING),
        ("COMPLETED", JobState.COMPLETED),
        ("FAILED", JobState.FAILED),
        ("NODE_FAIL", JobState.FAILED),
        ("OUT_OF_MEMORY", JobState.FAILED),
        ("TIMEOUT", JobState.FAILED),
        ("BOOT_FAIL", JobState.FAILED),
        ("DEADLINE", JobState.FAILED),
        ("PREEMPTED", JobState.FAILED),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 1000", JobState.CANCELLED),
        ("CANCELLED+", JobState.CANCELLED),
    ],
)
def test_slurm_states_map_onto_job_states(slurm_state: str, expected: JobState) -> None:
    assert job_state_of(slurm_state) == expected


def test_exit_codes_and_failure_reasons() -> None:
    assert exit_code_of("3:0") == 3
    assert exit_code_of("0:9") == -9
    assert exit_code_of("") is None
    status = job_status_from_slurm("12", [SlurmJobRow("12", "TIMEOUT", "0:15", "TimeLimit")], "last words\n")
    assert status.state == JobState.FAILED
    assert status.exit_code == -15
    assert status.reason.startswith("TIMEOUT (signal 15), TimeLimit")
    assert status.reason.endswith("last words")


def test_an_array_is_as_far_as_its_least_advanced_task() -> None:
    rows = parse_rows("12_0|COMPLETED|0:0|None\n12_1|RUNNING|0:0|None\n12.batch|COMPLETED|0:0|\n", 4)
    assert [row.job_id for row in rows] == ["12_0", "12_1"]
    assert job_status_from_slurm("12", rows).state == JobState.RUNNING
    rows = parse_rows("12_0|COMPLETED|0:0|None\n12_1|FAILED|2:0|NonZeroExitCode\n", 4)
    failed = job_status_from_slurm("12", rows)
    assert failed.state == JobState.FAILED
    assert failed.reason.startswith("task 12_1: FAILED (exit code 2)")


@pytest.mark.slurm
def test_array_job_logs_every_task(slurm_cluster: None, tmp_path: Path) -> None:
    backend = SlurmBackend(state_dir=tmp_path / "state")
    spec = JobSpec(
        name="array",
        command=["sh", "-c", "echo task $SLURM_ARRAY_TASK_ID"],
        workdir=str(tmp_path),
        resources=Resources(array=2),
    )
    job_id = backend.submit(spec)
    wait_until(lambda: backend.status(job_id).state.finished, 30, f"array job {job_id} to end")
    assert backend.status(job_id).state == JobState.COMPLETED
    assert backend.logs(job_id) == "==> task 0 <==\ntask 0\n==> task 1 <==\ntask 1\n"


@pytest.mark.slurm
def test_ranks_run_under_srun(slurm_cluster: None, tmp_path: Path) -> None:
    backend = SlurmBackend(state_dir=tmp_path / "state")
    spec = JobSpec(
        name="ranks",
        command=["sh", "-c", "echo rank $SLURM_PROCID"],
        workdir=str(tmp_path),
        resources=Resources(ranks=2),
    )
    job_id = backend.submit(spec)
    wait_until(lambda: backend.status(job_id).state.finished, 30, f"job {job_id} to end")
    assert backend.status(job_id).state == JobState.COMPLETED
    assert sorted(backend.logs(job_id).splitlines()) == ["rank 0", "rank 1"]


@pytest.mark.slurm
def test_sbatch_refusal_is_one_readable_error(slurm_cluster: None, tmp_path: Path) -> None:
    from photonstream.jobs.common import JobBackendError

    spec = JobSpec(name="nope", command=["true"], workdir=str(tmp_path), resources=Resources(partition="nosuchpart"))
    with pytest.raises(JobBackendError, match=r"sbatch refused job nope: .*partition"):
        SlurmBackend(state_dir=tmp_path / "state").submit(spec)


@pytest.mark.slurm
def test_without_accounting_squeue_and_scontrol_give_state_and_exit_code(slurm_cluster: None, tmp_path: Path) -> None:
    # sacct = `false`: what a cluster without slurmdbd answers (an error), so the fallback path is the one used
    backend = SlurmBackend(state_dir=tmp_path / "state", sacct="false")
    spec = JobSpec(name="no-dbd", command=["sh", "-c", "echo gone-wrong; exit 5"], workdir=str(tmp_path))
    job_id = backend.submit(spec)
    wait_until(lambda: backend.status(job_id).state.finished, 30, f"job {job_id} to end")

    status = backend.status(job_id)
    assert status.state == JobState.FAILED
    assert status.exit_code == 5
    assert "gone-wrong" in status.reason


def squeue_state(job_id: str) -> str:
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


@pytest.mark.slurm
def test_each_task_of_an_array_is_watched_and_cancelled_on_its_own(slurm_cluster: None, tmp_path: Path) -> None:
    backend = SlurmBackend(state_dir=tmp_path / "state")
    workdir = tmp_path / "work"
    specs = [
        JobSpec(
            name=f"sleeper-{i}",
            command=["sh", "-c", "echo $WORKER $(cat $PHOTONSTREAM_JOB_SECRETS_FILE); exec sleep 300"],
            environment={"WORKER": f"w{i}"},
            secrets={"TOKEN": "t0p"},
            workdir=str(workdir),
        )
        for i in range(2)
    ]
    task_ids = backend.submit_array(specs, "sleepers-array0")
    try:
        array_id = task_ids[0].split("_")[0]
        assert array_id.isdigit() and task_ids == [f"{array_id}_0", f"{array_id}_1"]
        for task_id in task_ids:
            wait_until(lambda t=task_id: backend.status(t).state == JobState.RUNNING, 30, f"task {task_id} to run")
        wait_until(lambda: all(backend.logs(t) for t in task_ids), 30, "both tasks to write their logs")
        assert [backend.logs(t) for t in task_ids] == ['w0 {"TOKEN": "t0p"}\n', 'w1 {"TOKEN": "t0p"}\n']
        secrets_files = list(workdir.glob("job-secrets-*.json"))
        assert len(secrets_files) == 1  # one for the array

        backend.cancel(task_ids[1])
        assert backend.status(task_ids[1]).state == JobState.CANCELLED
        assert backend.status(task_ids[0]).state == JobState.RUNNING
        assert squeue_state(task_ids[0]) == "RUNNING"  # Slurm itself: the other task runs on
        assert secrets_files[0].exists()  # the running task may still read it

        backend.cancel(task_ids[0])
        assert backend.status(task_ids[0]).state == JobState.CANCELLED
        assert not secrets_files[0].exists()  # every task ended: gone
        assert backend.status(array_id).state == JobState.CANCELLED
    finally:
        for task_id in task_ids:
            subprocess.run(["scancel", task_id], check=False)
