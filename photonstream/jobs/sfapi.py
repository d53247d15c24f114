"""The NERSC Superfacility (SF) API job backend: Slurm jobs at NERSC over HTTPS, through plain httpx.

Authentication (docs.nersc.gov/services/sfapi/authentication): an SF API client made in Iris has a client id and
a private key. The backend signs a short-lived JWT client assertion with that key (RS256; iss = sub = client id,
aud = the token URL) and exchanges it at the token URL for an access token (OAuth2 client-credentials grant,
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``). Access tokens live about ten
minutes; a new one is fetched before the old one expires, or after a 401.

Endpoints used (https://api.nersc.gov/api/v1.2):
- ``POST /compute/jobs/{machine}`` with form fields ``job`` (the batch script text) and ``isPath=false``: answers
  ``{"task_id", "status", "error"}``; submission is asynchronous,
- ``GET /tasks/{task_id}``: ``{"id", "status", "result"}``, ``result`` a JSON string ``{"status", "jobid", "error"}``
  once the task is done,
- ``GET /compute/jobs/{machine}/{jobid}?sacct=false|true``: ``{"status", "output": [rows], "error"}``, the rows
  squeue's or sacct's fields in lower case (``jobid``, ``state``, ``exitcode``, ``reason``),
- ``DELETE /compute/jobs/{machine}/{jobid}``: scancel,
- ``GET /utilities/download/{machine}/{path}?binary=false``: ``{"status", "file", "is_binary", "error"}``,
- ``PUT /utilities/upload/{machine}/{path}`` with a multipart ``file``: ``{"status", "error"}``.

The job's secrets (``JobSpec.secrets``: its buffer credential, its report secret) never go into the script, which
NERSC's Slurm keeps: they are uploaded first, as their own file ``<workdir>/job-secrets-<random>.json``, and the
script names only that file (``PHOTONSTREAM_JOB_SECRETS_FILE``). The upload creates the file with the NERSC
user's umask, so the workdir must be a private directory (``mkdir -m 700``), as for any credential there. When the
stream finishes, ``discard_secrets`` overwrites the file with ``{}`` through the same endpoint (the API has no
delete endpoint for files; the values are gone, an empty file is left).

The scripts are the Slurm backend's (``slurm.batch_script``), so ``spec.workdir`` and the log path are paths on
the NERSC machine, and the workdir must exist there. NERSC cannot be reached from photonstream's test machines:
the tests run this backend against ``tests/jobs/sfapi_standin.py``, a local server that speaks these documented
request and response shapes and runs the submitted script on the local backend.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from photonstream.errors import ConfigError, MissingDependencyError
from photonstream.job_secrets import SECRETS_FILE_ENV
from photonstream.jobs.base import JobSpec, JobState, JobStatus
from photonstream.jobs.common import (
    REASON_TAIL_BYTES,
    REASON_TAIL_LINES,
    JobBackendError,
    JobNotFoundError,
    JobRecords,
    default_state_dir,
    log_path_of,
    tail_text,
)
from photonstream.jobs.slurm import SlurmJobRow, array_log_path, batch_script, job_state_of, job_status_from_slurm

NERSC_API_URL = "https://api.nersc.gov/api/v1.2"
NERSC_TOKEN_URL = "https://oidc.nersc.gov/c2id/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ASSERTION_LIFETIME_S = 300
_TOKEN_MARGIN_S = 30.0
_MISSING_FILE_HINTS = ("no such file", "not found", "does not exist")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def client_assertion(client_id: str, private_key_pem: bytes, token_url: str, now: float | None = None) -> str:
    """A JWT (RS256) that proves possession of the client's private key to the token endpoint."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    key = serialization.load_pem_private_key(private_key_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("sfapi backend: the private key is not an RSA key (SF API clients use RSA keys)")
    issued = int(now if now is not None else time.time())
    header = {"alg": "RS256", "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + _ASSERTION_LIFETIME_S,
        "jti": uuid.uuid4().hex,
    }
    signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def _read_private_key(private_key: str | Path) -> bytes:
    text = str(private_key)
    if text.lstrip().startswith("-----BEGIN"):
        return text.encode()
    try:
        return Path(text).expanduser().read_bytes()
    except OSError as error:
        raise ConfigError(f"sfapi backend: cannot read the private key file {text}: {error.strerror}") from error


class SfApiBackend:
    """Jobs on a NERSC machine through the Superfacility API; see the module docstring.

    >>> backend = SfApiBackend(client_id="abc123", private_key="~/.superfacility/abc123.pem")
    """

    name = "sfapi"

    def __init__(
        self,
        client_id: str,
        private_key: str | Path,
        machine: str = "perlmutter",
        api_url: str = NERSC_API_URL,
        token_url: str = NERSC_TOKEN_URL,
        state_dir: str | Path | None = None,
        timeout_s: float = 30.0,
        task_poll_interval_s: float = 1.0,
        task_timeout_s: float = 300.0,
    ) -> None:
        try:
            import cryptography  # noqa: F401
            import httpx
        except ImportError as error:
            raise MissingDependencyError.for_package(error.name or "httpx", "the sfapi job backend") from error
        if not client_id:
            raise ConfigError("sfapi backend: client_id is empty (the SF API client's id from Iris)")
        self.client_id = client_id
        self.machine = machine
        self.token_url = token_url
        self.task_poll_interval_s = task_poll_interval_s
        self.task_timeout_s = task_timeout_s
        self._private_key = _read_private_key(private_key)
        client_assertion(client_id, self._private_key, token_url)  # a bad key fails here, not at the first submit
        self.records = JobRecords(Path(state_dir or default_state_dir()) / "sfapi")
        self._http = httpx.Client(base_url=api_url.rstrip("/") + "/", timeout=timeout_s)
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = threading.Lock()

    # --- the JobBackend protocol -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        log_path = log_path_of(spec)
        batch_script(spec.model_copy(update={"secrets": {}}), log_path)  # a bad spec fails before any upload
        secrets_file = None
        if spec.secrets:
            secrets_file = f"{spec.workdir.rstrip('/')}/job-secrets-{uuid.uuid4().hex[:12]}.json"
            self._upload(secrets_file, json.dumps(spec.secrets).encode())
            environment = {**spec.environment, SECRETS_FILE_ENV: secrets_file}
            spec = spec.model_copy(update={"environment": environment, "secrets": {}})
        script = batch_script(spec, log_path)
        answer = self._request("POST", f"compute/jobs/{self.machine}", data={"job": script, "isPath": "false"})
        if answer.get("status") != "OK" or not answer.get("task_id"):
            raise JobBackendError(f"SF API refused job {spec.name}: {answer.get('error') or answer}")
        job_id = self._wait_for_job_id(str(answer["task_id"]), spec.name)
        record = {"name": spec.name, "log_path": log_path, "array": spec.resources.array, "submitted": time.time()}
        self.records.save(self._record_key(job_id), {**record, "secrets_file": secrets_file})
        return job_id

    def discard_secrets(self, job_id: str) -> None:
        record = self.records.load(self._record_key(job_id))
        if record is not None and record.get("secrets_file") and not record.get("secrets_discarded"):
            self._upload(record["secrets_file"], b"{}")
            self.records.save(self._record_key(job_id), {**record, "secrets_discarded": True})

    def status(self, job_id: str) -> JobStatus:
        rows = self._rows(job_id, sacct=False)
        if not any(not job_state_of(row.state).finished for row in rows):
            rows = self._rows(job_id, sacct=True) or rows
        if not rows:
            record = self.records.load(self._record_key(job_id))
            if record is None:
                raise JobNotFoundError(f"sfapi backend: {self.machine} knows no job {job_id}")
            if time.time() - record["submitted"] < 60:
                return JobStatus(job_id=job_id, state=JobState.PENDING, reason="submitted; not yet listed by Slurm")
            return JobStatus(job_id=job_id, state=JobState.LOST, reason=f"{self.machine} no longer knows job {job_id}")
        status = job_status_from_slurm(job_id, rows)
        if status.state == JobState.FAILED:
            status = job_status_from_slurm(job_id, rows, self.logs(job_id, REASON_TAIL_LINES, REASON_TAIL_BYTES))
        return status

    def cancel(self, job_id: str) -> None:
        """``DELETE`` the job (scancel at NERSC); returns at once."""
        answer = self._request("DELETE", f"compute/jobs/{self.machine}/{job_id}")
        if answer.get("status") != "OK" and not self.status(job_id).state.finished:
            raise JobBackendError(f"SF API could not cancel job {job_id}: {answer.get('error')}")

    def logs(self, job_id: str, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str:
        record = self.records.load(self._record_key(job_id))
        if record is None:
            raise JobNotFoundError(f"sfapi backend: no record of job {job_id} on {self.machine} (submitted elsewhere?)")
        if not record.get("array"):
            return tail_text(self._download(record["log_path"]), tail_lines, max_bytes)
        pattern = array_log_path(record["log_path"])
        parts = []
        for task in range(record["array"]):
            text = tail_text(self._download(pattern.replace("%a", str(task))), tail_lines, max_bytes)
            if text:
                parts.append(f"==> task {task} <==\n{text}")
        return "".join(parts)[-max_bytes:]

    def close(self) -> None:
        self._http.close()

    # --- internals -----------------------------------------------------------------------------------------------

    def _record_key(self, job_id: str) -> str:
        return f"{self.machine}-{job_id}"

    def _access_token(self, renew: bool = False) -> str:
        import httpx

        with self._token_lock:
            if not renew and self._token is not None and time.time() < self._token_expires - _TOKEN_MARGIN_S:
                return self._token
            form = {
                "grant_type": "client_credentials",
                "client_id": self.client_id,
                "client_assertion_type": JWT_BEARER,
                "client_assertion": client_assertion(self.client_id, self._private_key, self.token_url),
            }
            try:
                response = self._http.post(self.token_url, data=form)
            except httpx.HTTPError as error:
                raise JobBackendError(f"SF API token endpoint {self.token_url} did not answer: {error}") from error
            if response.status_code != 200:
                raise JobBackendError(
                    f"SF API token endpoint refused client {self.client_id}: HTTP {response.status_code} "
                    f"{_short(response.text)}"
                )
            answer = response.json()
            self._token = str(answer["access_token"])
            self._token_expires = time.time() + float(answer.get("expires_in", 600))
            return self._token

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        import httpx

        for attempt in range(2):
            headers = {"Authorization": f"Bearer {self._access_token(renew=attempt > 0)}", "accept": "application/json"}
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.HTTPError as error:
                raise JobBackendError(f"SF API {method} /{path} failed: {error}") from error
            if response.status_code != 401:
                break
        if response.status_code >= 400:
            raise JobBackendError(f"SF API {method} /{path}: HTTP {response.status_code} {_short(response.text)}")
        try:
            return response.json()
        except ValueError as error:
            raise JobBackendError(f"SF API {method} /{path} answered non-JSON: {_short(response.text)}") from error

    def _wait_for_job_id(self, task_id: str, name: str) -> str:
        deadline = time.monotonic() + self.task_timeout_s
        while True:
            task = self._request("GET", f"tasks/{task_id}")
            if str(task.get("status", "")).lower() in ("error", "failed"):
                raise JobBackendError(f"SF API submission of job {name} failed: {task.get('result')}")
            if task.get("result"):
                result = json.loads(task["result"]) if isinstance(task["result"], str) else task["result"]
                if str(result.get("status", "")).lower() == "error" or not result.get("jobid"):
                    raise JobBackendError(f"sbatch at NERSC refused job {name}: {result.get('error') or result}")
                return str(result["jobid"])
            if time.monotonic() > deadline:
                raise JobBackendError(f"SF API task {task_id} (job {name}) gave no job id in {self.task_timeout_s:g} s")
            time.sleep(self.task_poll_interval_s)

    def _rows(self, job_id: str, sacct: bool) -> list[SlurmJobRow]:
        answer = self._request(
            "GET", f"compute/jobs/{self.machine}/{job_id}", params={"sacct": "true" if sacct else "false"}
        )
        if answer.get("status") != "OK":
            return []
        rows = []
        for item in answer.get("output") or []:
            row_id = str(item.get("jobid", job_id))
            if "." in row_id:  # job steps (123.batch, 123.0)
                continue
            rows.append(
                SlurmJobRow(
                    job_id=row_id,
                    state=str(item.get("state", "")),
                    exit_code=str(item.get("exitcode") or ""),
                    reason=str(item.get("reason") or ""),
                )
            )
        return rows

    def _upload(self, path: str, content: bytes) -> None:
        name = path.rsplit("/", 1)[-1]
        answer = self._request("PUT", f"utilities/upload/{self.machine}/{path}", files={"file": (name, content)})
        if answer.get("status") != "OK":
            raise JobBackendError(f"SF API could not upload {path}: {answer.get('error') or answer}")

    def _download(self, path: str) -> bytes:
        # like NERSC's own client, the absolute path follows the machine name ("perlmutter//pscratch/...")
        answer = self._request("GET", f"utilities/download/{self.machine}/{path}", params={"binary": "false"})
        if answer.get("status") != "OK":
            error = str(answer.get("error") or "")
            if any(hint in error.lower() for hint in _MISSING_FILE_HINTS):
                return b""
            raise JobBackendError(f"SF API could not download {path}: {error}")
        content = answer.get("file") or ""
        return base64.b64decode(content) if answer.get("is_binary") else content.encode()


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
