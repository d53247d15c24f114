"""Fixtures for the job backend tests: a Slurm gate, the SF API stand-in, and one harness per backend.

Tests that need a real Slurm are marked ``slurm``. They skip, naming the reason, when ``sbatch`` is missing or no
controller answers -- unless ``PHOTONSTREAM_REQUIRE_SLURM=1`` (CI, after scripts/slurm/start-slurm.sh), where a
missing Slurm fails them instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from photonstream.jobs.base import JobBackend, JobSpec, JobState, JobStatus, Resources

REQUIRE_SLURM_ENV = "PHOTONSTREAM_REQUIRE_SLURM"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slurm: needs a running Slurm cluster (scripts/slurm/start-slurm.sh)")


def slurm_unavailable_reason() -> str | None:
    """Why Slurm cannot run jobs here, or None when it can."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (install slurm-client and run scripts/slurm/start-slurm.sh)"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=10, check=False)
        nodes = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"the Slurm controller does not answer: {error}"
    if ping.returncode != 0 or "UP" not in ping.stdout:
        return f"the Slurm controller does not answer: {(ping.stdout + ping.stderr).strip()[-200:]}"
    usable = [state for state in nodes.stdout.split() if state.rstrip("*~#") in ("idle", "mixed", "allocated")]
    if not usable:
        return f"no Slurm node can run jobs (sinfo: {nodes.stdout.split() or nodes.stderr.strip()[-200:]})"
    return None


def require_slurm() -> None:
    """Skip the calling test, naming why, where Slurm cannot run jobs; fail it instead under REQUIRE_SLURM_ENV=1."""
    reason = slurm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get(REQUIRE_SLURM_ENV) == "1":
        pytest.fail(f"{REQUIRE_SLURM_ENV}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    require_slurm()


@pytest.fixture(scope="session")
def sfapi_key():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return key, pem


@pytest.fixture
def sfapi_standin(tmp_path: Path, sfapi_key):
    from tests.jobs.sfapi_standin import SfApiStandIn

    standin = SfApiStandIn("photonstream-test-client", sfapi_key[0].public_key(), tmp_path / "standin")
    standin.start()
    yield standin
    standin.stop()


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@dataclass
class Harness:
    """A backend plus what the lifecycle tests need around it: a workdir, waiting, and cleanup."""

    backend: JobBackend
    workdir: Path
    patience_s: float  # how long a scheduler may take for a transition, generously
    submitted: list[str] = field(default_factory=list)

    def submit(self, name: str, script: str, **resources: int) -> str:
        spec = JobSpec(
            name=name, command=["sh", "-c", script], workdir=str(self.workdir), resources=Resources(**resources)
        )
        job_id = self.backend.submit(spec)
        self.submitted.append(job_id)
        return job_id

    def wait_for(self, job_id: str, *states: JobState) -> JobStatus:
        seen: list[JobStatus] = []

        def reached() -> bool:
            seen.append(self.backend.status(job_id))
            return seen[-1].state in states

        wait_until(reached, self.patience_s, f"job {job_id} to be {'/'.join(states)} (last: {seen[-1:]})")
        return seen[-1]

    def wait_finished(self, job_id: str) -> JobStatus:
        return self.wait_for(job_id, *(state for state in JobState if state.finished))

    def cleanup(self) -> None:
        for job_id in self.submitted:
            try:
                if not self.backend.status(job_id).state.finished:
                    self.backend.cancel(job_id)
            except Exception:  # cleanup must not hide the test's own failure
                pass


@pytest.fixture(params=["local", pytest.param("slurm", marks=pytest.mark.slurm), "sfapi"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    workdir = tmp_path / "work"
    workdir.mkdir()
    if request.param == "local":
        from photonstream.jobs.local import LocalBackend

        backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=4, cancel_grace_s=2.0)
        harness = Harness(backend, workdir, patience_s=15)
    elif request.param == "slurm":
        request.getfixturevalue("slurm_cluster")
        from photonstream.jobs.slurm import SlurmBackend

        harness = Harness(SlurmBackend(state_dir=tmp_path / "state"), workdir, patience_s=30)
    else:
        from photonstream.jobs.sfapi import SfApiBackend

        standin = request.getfixturevalue("sfapi_standin")
        backend = SfApiBackend(
            client_id=standin.client_id,
            private_key=request.getfixturevalue("sfapi_key")[1],
            api_url=standin.api_url,
            token_url=standin.token_url,
            state_dir=tmp_path / "state",
            task_poll_interval_s=0.05,
        )
        harness = Harness(backend, workdir, patience_s=15)
    yield harness
    harness.cleanup()
    close = getattr(harness.backend, "close", None)
    if close is not None:
        close()
