"""What the job backends share: their errors, where they keep state, log paths and log tails, failure reasons."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from photonstream.config.environment import STATE_DIR_ENV, THREAD_VARIABLES, XDG_STATE_HOME_ENV
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.job_secrets import SECRETS_FILE_ENV, write_secrets_file
from photonstream.jobs.base import JobSpec

REASON_TAIL_LINES = 5
REASON_TAIL_BYTES = 2000


class JobNotFoundError(PhotonstreamError, LookupError):
    """The backend knows no job with this id. (404)"""

    http_status = 404


class JobBackendError(PhotonstreamError):
    """The scheduler refused a request or did not answer (sbatch failed, SF API error). (503)"""

    http_status = 503


def default_state_dir() -> Path:
    """``$PHOTONSTREAM_STATE_DIR/jobs``, else ``$XDG_STATE_HOME/photonstream/jobs`` (``~/.local/state/...``)."""
    explicit = os.environ.get(STATE_DIR_ENV)
    if explicit:
        return Path(explicit) / "jobs"
    xdg = os.environ.get(XDG_STATE_HOME_ENV) or str(Path.home() / ".local" / "state")
    return Path(xdg) / "photonstream" / "jobs"


def log_path_of(spec: JobSpec) -> str:
    """Where a job's stdout+stderr go: ``spec.log_path`` (relative to the workdir), else ``<workdir>/<name>.log``."""
    path = Path(spec.log_path) if spec.log_path else Path(f"{spec.name}.log")
    return str(path if path.is_absolute() else Path(spec.workdir) / path)


def tail_text(data: bytes, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str:
    """The last ``max_bytes`` of ``data`` as text (a line cut by the limit is dropped), then its last ``tail_lines``."""
    if max_bytes <= 0:
        return ""
    # the first kept line is partial unless the byte before the kept part ends a line
    starts_mid_line = len(data) > max_bytes and data[-max_bytes - 1 : -max_bytes] != b"\n"
    data = data[-max_bytes:]
    if starts_mid_line and b"\n" in data:
        data = data[data.index(b"\n") + 1 :]
    text = data.decode("utf-8", errors="replace")
    if tail_lines is not None:
        if tail_lines <= 0:
            return ""
        lines = text.splitlines(keepends=True)
        text = "".join(lines[-tail_lines:])
    return text


def read_tail(path: str | Path, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str:
    """``tail_text`` of a file, reading only its end; ``""`` when the file does not exist (yet)."""
    try:
        with open(path, "rb") as file:
            size = file.seek(0, os.SEEK_END)
            # one byte more than asked, so that tail_text knows whether the first line was cut
            file.seek(max(0, size - max_bytes - 1))
            data = file.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return ""
    return tail_text(data, tail_lines, max_bytes)


def failure_reason(summary: str, log_tail: str) -> str:
    """``summary`` followed by the last lines the job printed (what a user needs to see why it failed)."""
    tail = tail_text(log_tail.encode(), REASON_TAIL_LINES, REASON_TAIL_BYTES).strip()
    return f"{summary}; last output:\n{tail}" if tail else summary


def thread_limits(spec: JobSpec, per_rank: str | None = None) -> dict[str, str]:
    """``OMP_NUM_THREADS`` and its kin for the variables the job's environment does not set: ``per_rank`` (default:
    ``resources.cores_per_rank``), so numpy, BLAS and bitshuffle start as many threads as a rank has cores, not
    as many as the node has."""
    value = per_rank or str(spec.resources.cores_per_rank)
    return {name: value for name in THREAD_VARIABLES if name not in spec.environment}


def place_secrets(spec: JobSpec) -> tuple[JobSpec, str | None]:
    """Write ``spec.secrets`` to a 0600 file in the (existing) workdir; returns the spec to run, whose environment
    names the file instead (and which holds no secrets), and the file's path (None when there were none)."""
    if not spec.secrets:
        return spec, None
    try:
        path = write_secrets_file(spec.workdir, spec.secrets)
    except OSError as error:
        raise ConfigError(f"job {spec.name}: cannot write a secrets file in {spec.workdir}: {error.strerror}") from None
    environment = {**spec.environment, SECRETS_FILE_ENV: str(path)}
    return spec.model_copy(update={"environment": environment, "secrets": {}}), str(path)


class JobRecords:
    """What a scheduler backend must remember about its jobs (log path, array size): one JSON file per job.

    The scheduler keeps the job itself; these records only let a new backend object (after an API restart) find
    a job's output again.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, job_id: str) -> Path:
        return self.directory / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', job_id)}.json"

    def save(self, job_id: str, record: dict[str, Any]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(job_id)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(record))
        os.replace(temporary, path)

    def load(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(job_id).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
