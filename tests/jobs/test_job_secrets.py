"""A job's secrets reach it through a 0600 file, never through what the scheduler keeps; and its thread limits.

On each backend (local, a real Slurm, the SF API stand-in) a job is submitted with a secret and waits for a go
signal, so that what the backend keeps can be read while it runs: the local backend's stored spec, the batch script
Slurm keeps (``scontrol write batch_script``), the script the SF API was sent. None may hold the secret; the file
must be mode 0600 and the job must read the secret from it; once the job ended the file is gone (SF API: its
values overwritten). The job also reports the OMP/OpenBLAS/MKL thread variables it saw: ``cores_per_rank``.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from photonstream.errors import ConfigError
from photonstream.job_secrets import SECRETS_FILE_ENV, job_secret, read_secrets_file, write_secrets_file
from photonstream.jobs.base import JobSpec, JobState, Resources
from photonstream.jobs.slurm import batch_script
from tests.jobs.conftest import Harness

SECRET_NAME = "PHOTONSTREAM_TEST_SECRET"

# waits for the go file, then prints what it saw as one JSON line
JOB = """
import hashlib, json, os, sys, time
from photonstream.job_secrets import SECRETS_FILE_ENV, job_secret
go = sys.argv[1]
while not os.path.exists(go):
    time.sleep(0.05)
path = os.environ[SECRETS_FILE_ENV]
print(json.dumps({
    "path": path,
    "mode": oct(os.stat(path).st_mode & 0o777),
    "sha256": hashlib.sha256(job_secret("SECRET_NAME").encode()).hexdigest(),
    "in_environment": "SECRET_NAME" in os.environ,
    "threads": {n: os.environ.get(n) for n in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
}), flush=True)
""".replace("SECRET_NAME", SECRET_NAME)


def kept_by_the_backend(request: pytest.FixtureRequest, harness: Harness, kind: str, job_id: str) -> str:
    """What the backend (or its scheduler) keeps of the job's definition."""
    if kind == "local":
        database = Path(harness.backend.state_dir) / "local-jobs.sqlite3"  # type: ignore[attr-defined]
        with sqlite3.connect(database) as db:
            ((spec, argv),) = db.execute("SELECT spec, argv FROM jobs WHERE id = ?", (job_id,)).fetchall()
        return spec + argv
    if kind == "slurm":
        result = subprocess.run(
            ["scontrol", "write", "batch_script", job_id, "-"], capture_output=True, text=True, timeout=30, check=True
        )
        return result.stdout
    return str(request.getfixturevalue("sfapi_standin").scripts[job_id])


def test_the_secret_reaches_the_job_only_through_its_0600_file(
    request: pytest.FixtureRequest, harness: Harness, tmp_path: Path
) -> None:
    kind = harness.backend.name
    secret = secrets.token_urlsafe(32)
    go = tmp_path / "go"
    spec = JobSpec(
        name="secretive",
        command=[sys.executable, "-c", JOB, str(go)],
        workdir=str(harness.workdir),
        secrets={SECRET_NAME: secret},
        resources=Resources(cores_per_rank=2),
    )
    job_id = harness.backend.submit(spec)
    harness.submitted.append(job_id)

    files = list(harness.workdir.glob("job-secrets-*.json"))
    assert len(files) == 1
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert read_secrets_file(files[0]) == {SECRET_NAME: secret}
    harness.wait_for(job_id, JobState.RUNNING)
    kept = kept_by_the_backend(request, harness, kind, job_id)
    assert secret not in kept
    assert f"{SECRETS_FILE_ENV}=" in kept or f'"{SECRETS_FILE_ENV}"' in kept  # only the file's path travels

    go.touch()
    assert harness.wait_finished(job_id).state == JobState.COMPLETED, harness.backend.logs(job_id)
    seen = json.loads(harness.backend.logs(job_id).strip().splitlines()[-1])
    assert seen["path"] == str(files[0]) and seen["mode"] == "0o600"
    assert seen["sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    assert seen["in_environment"] is False
    assert seen["threads"] == dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "2")

    harness.backend.discard_secrets(job_id)  # type: ignore[attr-defined]  (what the API does at the stream's end)
    if kind == "sfapi":  # no delete endpoint: the values are overwritten
        assert read_secrets_file(files[0]) == {}
    else:
        assert not files[0].exists()


def test_thread_variables_the_job_sets_itself_are_kept() -> None:
    spec = JobSpec(name="t", command=["x"], workdir="/w", environment={"OMP_NUM_THREADS": "7"},
                   resources=Resources(cores_per_rank=3))  # fmt: skip
    script = batch_script(spec)
    assert "export OMP_NUM_THREADS=7\n" in script
    assert "export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-3}\n" in script
    assert "OMP_NUM_THREADS=${" not in script
    with pytest.raises(ConfigError, match="secrets file"):
        batch_script(spec.model_copy(update={"secrets": {"A": "b"}}))


def test_secrets_file_is_0600_under_any_umask_and_never_overwrites(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_secrets_file(tmp_path, {"A": "1"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.iterdir()) == [path]  # the temporary name is gone
    second = write_secrets_file(tmp_path, {"A": "2"})
    assert second != path and read_secrets_file(path) == {"A": "1"}
    with pytest.raises(ConfigError, match="not a valid environment variable name"):
        write_secrets_file(tmp_path, {"A B": "x"})


def test_job_secret_reads_the_environment_then_the_file(tmp_path: Path) -> None:
    path = write_secrets_file(tmp_path, {"S": "from-file"})
    assert job_secret("S", {SECRETS_FILE_ENV: str(path)}) == "from-file"
    assert job_secret("S", {SECRETS_FILE_ENV: str(path), "S": "from-env"}) == "from-env"
    assert job_secret("OTHER", {SECRETS_FILE_ENV: str(path)}) is None
    assert job_secret("S", {}) is None
    path.unlink()
    with pytest.raises(ConfigError, match="does not exist"):
        job_secret("S", {SECRETS_FILE_ENV: str(path)})
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(ConfigError, match="one JSON object of strings"):
        job_secret("S", {SECRETS_FILE_ENV: str(tmp_path / "bad.json")})
