"""A local stand-in for NERSC's Superfacility API and its token endpoint, for testing the sfapi backend here.

It speaks the request and response shapes NERSC documents (see ``photonstream/jobs/sfapi.py``):
- ``POST /c2id/token``: OAuth2 client-credentials grant with a JWT client assertion; the assertion's RS256
  signature is verified against the client's public key, and iss, sub, aud and exp are checked,
- ``POST {api}/compute/jobs/{machine}`` (form ``job``, ``isPath=false``) → ``{"task_id", "status", "error"}``;
  the task gets its result a moment later, as at NERSC, where submission is asynchronous,
- ``GET {api}/tasks/{id}`` → ``{"id", "status", "result"}`` with ``result`` a JSON string holding ``jobid``,
- ``GET {api}/compute/jobs/{machine}/{jobid}?sacct=true|false`` → ``{"status", "output": [rows], "error"}``,
- ``DELETE {api}/compute/jobs/{machine}/{jobid}``,
- ``GET {api}/utilities/download/{machine}/{path}?binary=false`` → ``{"status", "file", "is_binary", "error"}``,
- ``PUT {api}/utilities/upload/{machine}/{path}`` (multipart field ``file``) → ``{"status", "error"}``; the file is
  written with mode 0600 (what a private workdir at NERSC gives), and kept in ``uploads`` for tests.
API calls need ``Authorization: Bearer <token>`` (a bare token, as NERSC's own client sends, is accepted too).

Submitted scripts run on photonstream's local backend, with the ``#SBATCH`` options that matter here (job name,
output, chdir, time) honoured; Slurm states and ``exit:signal`` codes are derived from the local job's end.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import secrets
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from photonstream.jobs.base import JobSpec, JobState, Resources
from photonstream.jobs.local import LocalBackend

API_PREFIX = "/api/v1.2"
TOKEN_PATH = "/c2id/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
TOKEN_LIFETIME_S = 600


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sbatch_options(script: str) -> dict[str, str]:
    options = {}
    for line in script.splitlines():
        match = re.match(r"#SBATCH\s+--([a-z-]+)=(\S+)", line)
        if match:
            options[match.group(1)] = match.group(2)
    return options


def _seconds(slurm_time: str) -> int:
    days, _, clock = slurm_time.rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds


def _slurm_state(state: JobState, reason: str) -> str:
    if state == JobState.FAILED and reason.startswith("time limit"):
        return "TIMEOUT"
    return {
        JobState.PENDING: "PENDING",
        JobState.RUNNING: "RUNNING",
        JobState.COMPLETED: "COMPLETED",
        JobState.FAILED: "FAILED",
        JobState.CANCELLED: "CANCELLED by 0",
        JobState.LOST: "NODE_FAIL",
    }[state]


def _slurm_exit_code(exit_code: int | None) -> str:
    if exit_code is None:
        return "0:0"
    return f"0:{-exit_code}" if exit_code < 0 else f"{exit_code}:0"


class SfApiStandIn:
    """The server; ``start()`` answers (api_url, token_url); ``stop()`` cancels what still runs."""

    def __init__(self, client_id: str, public_key: rsa.RSAPublicKey, state_dir: Path, machine: str = "perlmutter"):
        self.client_id = client_id
        self.public_key = public_key
        self.machine = machine
        self.spool = state_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self.local = LocalBackend(state_dir=state_dir / "local", max_concurrent=8, cancel_grace_s=2.0)
        self.tokens: dict[str, float] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, str] = {}  # Slurm-like job id → local job id
        self.requests: list[tuple[str, str]] = []  # (method, path) of every API call, for tests
        self.scripts: dict[str, str] = {}  # Slurm-like job id → the batch script as submitted
        self.uploads: list[tuple[str, bytes]] = []  # (path, content) of every upload
        self._job_numbers = itertools.count(4_000_001)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def token_url(self) -> str:
        return self.base_url + TOKEN_PATH

    def start(self) -> tuple[str, str]:
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self.api_url, self.token_url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        for local_id in list(self.jobs.values()):
            if not self.local.status(local_id).state.finished:
                self.local.cancel(local_id)
        self.local.close()

    # --- token endpoint ------------------------------------------------------------------------------------------

    def issue_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        def refuse(description: str) -> tuple[int, dict[str, Any]]:
            return 401, {"error": "invalid_client", "error_description": description}

        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}
        if form.get("client_assertion_type") != JWT_BEARER:
            return refuse("a JWT client assertion is required")
        try:
            header_b64, claims_b64, signature_b64 = form.get("client_assertion", "").split(".")
            header = json.loads(_b64url_decode(header_b64))
            claims = json.loads(_b64url_decode(claims_b64))
            if header.get("alg") != "RS256":
                return refuse("the assertion must be signed with RS256")
            self.public_key.verify(
                _b64url_decode(signature_b64),
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except (ValueError, InvalidSignature):
            return refuse("bad client assertion signature")
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return refuse("unknown client")
        if claims.get("aud") != self.token_url:
            return refuse("wrong audience")
        if claims.get("exp", 0) < time.time():
            return refuse("client assertion expired")
        token = secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + TOKEN_LIFETIME_S
        return 200, {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_LIFETIME_S}

    def authorized(self, header: str | None) -> bool:
        token = (header or "").removeprefix("Bearer ").strip()
        return self.tokens.get(token, 0) > time.time()

    # --- API -----------------------------------------------------------------------------------------------------

    def submit(self, form: dict[str, str]) -> dict[str, Any]:
        if form.get("isPath", "").lower() != "false":
            return {"task_id": "", "status": "ERROR", "error": "the stand-in only takes script text (isPath=false)"}
        task_id = secrets.token_hex(6)
        self.tasks[task_id] = {"id": task_id, "status": "new", "result": None}
        threading.Timer(0.05, self._run_script, args=(task_id, form.get("job", ""))).start()
        return {"task_id": task_id, "status": "OK", "error": None}

    def _run_script(self, task_id: str, script: str) -> None:
        options = _sbatch_options(script)
        if "array" in options:
            result = {"status": "error", "jobid": None, "error": "job arrays are not supported by the stand-in"}
        else:
            job_id = str(next(self._job_numbers))
            script_path = self.spool / f"{job_id}.sh"
            script_path.write_text(script)
            self.scripts[job_id] = script
            spec = JobSpec(
                name=options.get("job-name", "sbatch"),
                command=["bash", str(script_path)],
                workdir=options.get("chdir", str(self.spool)),
                log_path=options.get("output", str(self.spool / f"slurm-{job_id}.out")).replace("%%", "%"),
                resources=Resources(time_limit_s=_seconds(options.get("time", "0-01:00:00"))),
                environment={"SLURM_JOB_ID": job_id},
            )
            with self._lock:
                self.jobs[job_id] = self.local.submit(spec)
            result = {"status": "ok", "jobid": job_id, "error": None}
        self.tasks[task_id] = {"id": task_id, "status": "completed", "result": json.dumps(result)}

    def job_rows(self, job_id: str, sacct: bool) -> dict[str, Any]:
        local_id = self.jobs.get(job_id)
        if local_id is None:
            return {"status": "OK", "output": [], "error": None}
        status = self.local.status(local_id)
        state = _slurm_state(status.state, status.reason)
        if not sacct:
            if status.state.finished:  # squeue forgets ended jobs
                return {"status": "OK", "output": [], "error": None}
            return {"status": "OK", "output": [{"jobid": job_id, "state": state, "reason": "None"}], "error": None}
        row = {"jobid": job_id, "state": state, "exitcode": _slurm_exit_code(status.exit_code), "reason": "None"}
        return {"status": "OK", "output": [row], "error": None}

    def cancel(self, job_id: str) -> dict[str, Any]:
        local_id = self.jobs.get(job_id)
        if local_id is None:
            return {"status": "ERROR", "output": [], "error": f"scancel: error: Invalid job id {job_id}"}
        self.local.cancel(local_id)
        return {"status": "OK", "output": [], "error": None}

    def download(self, path: str) -> dict[str, Any]:
        try:
            text = Path(path).read_text(errors="replace")
        except FileNotFoundError:
            return {"status": "ERROR", "file": None, "is_binary": False, "error": f"{path}: No such file or directory"}
        return {"status": "OK", "file": text, "is_binary": False, "error": None}

    def upload(self, path: str, content_type: str, body: bytes) -> dict[str, Any]:
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        parts = [p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "file"]
        if not message.is_multipart() or not parts:
            return {"status": "ERROR", "error": "upload: no multipart field 'file'"}
        content = parts[0].get_payload(decode=True) or b""
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as error:
            return {"status": "ERROR", "error": f"{path}: {error.strerror}"}
        with os.fdopen(descriptor, "wb") as file:
            file.write(content)
        self.uploads.append((path, content))
        return {"status": "OK", "error": None}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _form(self) -> dict[str, str]:
                length = int(self.headers.get("Content-Length") or 0)
                fields = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
                return {key: values[0] for key, values in fields.items()}

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                url = urlsplit(self.path)
                query = {key: values[0] for key, values in parse_qs(url.query).items()}
                if method == "POST" and url.path == TOKEN_PATH:
                    self._answer(*standin.issue_token(self._form()))
                    return
                if not url.path.startswith(API_PREFIX + "/"):
                    self._answer(404, {"detail": "Not Found"})
                    return
                if not standin.authorized(self.headers.get("Authorization")):
                    self._answer(401, {"detail": "Unauthorized"})
                    return
                path = url.path.removeprefix(API_PREFIX)
                standin.requests.append((method, path))
                jobs = f"/compute/jobs/{standin.machine}"
                download = f"/utilities/download/{standin.machine}/"
                upload = f"/utilities/upload/{standin.machine}/"
                if method == "POST" and path == jobs:
                    self._answer(200, standin.submit(self._form()))
                elif method == "GET" and path.startswith("/tasks/"):
                    task = standin.tasks.get(path.removeprefix("/tasks/"))
                    self._answer(200, task) if task else self._answer(404, {"detail": "task not found"})
                elif method == "GET" and path.startswith(jobs + "/"):
                    sacct = query.get("sacct", "false").lower() == "true"
                    self._answer(200, standin.job_rows(path.removeprefix(jobs + "/"), sacct))
                elif method == "DELETE" and path.startswith(jobs + "/"):
                    self._answer(200, standin.cancel(path.removeprefix(jobs + "/")))
                elif method == "GET" and path.startswith(download):
                    self._answer(200, standin.download("/" + path.removeprefix(download).lstrip("/")))
                elif method == "PUT" and path.startswith(upload):
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length)
                    target = "/" + path.removeprefix(upload).lstrip("/")
                    self._answer(200, standin.upload(target, self.headers.get("Content-Type", ""), body))
                else:
                    self._answer(404, {"detail": "Not Found"})

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_DELETE(self) -> None:
                self._route("DELETE")

            def do_PUT(self) -> None:
                self._route("PUT")

        return Handler
