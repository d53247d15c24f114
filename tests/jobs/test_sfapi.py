"""SF API backend against the local stand-in: authentication, token reuse, asynchronous submission, TIMEOUT."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from photonstream.errors import ConfigError
from photonstream.jobs.base import JobSpec, JobState, Resources
from photonstream.jobs.common import JobBackendError
from photonstream.jobs.sfapi import SfApiBackend
from tests.jobs.conftest import wait_until


def backend_for(standin, private_key: str, tmp_path: Path, client_id: str | None = None) -> SfApiBackend:
    return SfApiBackend(
        client_id=client_id or standin.client_id,
        private_key=private_key,
        api_url=standin.api_url,
        token_url=standin.token_url,
        state_dir=tmp_path / "state",
        task_poll_interval_s=0.05,
    )


def test_one_token_serves_many_calls_and_submission_goes_through_a_task(sfapi_standin, sfapi_key, tmp_path) -> None:
    backend = backend_for(sfapi_standin, sfapi_key[1], tmp_path)
    job_id = backend.submit(JobSpec(name="quick", command=["echo", "hi"], workdir=str(tmp_path)))
    wait_until(lambda: backend.status(job_id).state.finished, 15, "the job to end")

    assert backend.status(job_id).state == JobState.COMPLETED
    assert backend.logs(job_id) == "hi\n"
    assert len(sfapi_standin.tokens) == 1
    methods_and_paths = sfapi_standin.requests
    assert methods_and_paths[0] == ("POST", "/compute/jobs/perlmutter")
    assert ("GET", f"/compute/jobs/perlmutter/{job_id}") in methods_and_paths
    assert any(method == "GET" and path.startswith("/tasks/") for method, path in methods_and_paths)
    backend.close()


def test_a_key_the_facility_does_not_know_is_refused(sfapi_standin, tmp_path) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = stranger.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    backend = backend_for(sfapi_standin, pem, tmp_path)
    with pytest.raises(JobBackendError, match="token endpoint refused client photonstream-test-client: HTTP 401"):
        backend.submit(JobSpec(name="x", command=["true"], workdir=str(tmp_path)))
    assert sfapi_standin.jobs == {}


def test_private_key_from_a_file_and_bad_keys(sfapi_standin, sfapi_key, tmp_path) -> None:
    key_file = tmp_path / "client.pem"
    key_file.write_text(sfapi_key[1])
    backend = backend_for(sfapi_standin, str(key_file), tmp_path)
    assert backend.status  # constructed: the key signed an assertion
    with pytest.raises(ConfigError, match="cannot read the private key file"):
        backend_for(sfapi_standin, str(tmp_path / "missing.pem"), tmp_path)


def test_time_limit_reported_as_timeout(sfapi_standin, sfapi_key, tmp_path) -> None:
    backend = backend_for(sfapi_standin, sfapi_key[1], tmp_path)
    spec = JobSpec(name="slow", command=["sleep", "60"], workdir=str(tmp_path), resources=Resources(time_limit_s=1))
    job_id = backend.submit(spec)
    wait_until(lambda: backend.status(job_id).state.finished, 15, "the job to end")

    status = backend.status(job_id)
    assert status.state == JobState.FAILED
    assert status.reason.startswith("TIMEOUT")


def test_a_refused_submission_is_one_readable_error(sfapi_standin, sfapi_key, tmp_path) -> None:
    backend = backend_for(sfapi_standin, sfapi_key[1], tmp_path)
    spec = JobSpec(name="pool", command=["true"], workdir=str(tmp_path), resources=Resources(array=3))
    with pytest.raises(JobBackendError, match="sbatch at NERSC refused job pool: job arrays are not supported"):
        backend.submit(spec)
