"""The job model and the JobBackend protocol every backend implements (local, slurm, sfapi).

A job is a command (usually ``photonstream run PIPELINE.yaml`` or a consumer worker) with resources, environment,
secrets (written to a file only the job's owner reads, see ``photonstream.job_secrets``) and a working directory.
Backends ``submit`` it and return their own job id; ``status`` maps the backend's view onto one ``JobState``; ``cancel``
really stops the work (a process group, ``scancel``, the SF API's DELETE); ``logs`` returns what the job printed.
Backends that take ``secrets`` also have ``discard_secrets(job_id)``, which deletes the job's secrets file (the API
calls it when the stream finishes). The API records every state change it observes.

Backends that can start several jobs as one scheduler job array (Slurm) also implement ``ArrayJobBackend``:
``submit_array(specs, name)`` starts every spec as one task of a single array job and returns one id per task
(``JOBID_TASK``), which ``status``, ``cancel`` and ``logs`` take like any job id, one task at a time.
``submits_arrays(backend)`` says whether a backend can; elastic worker pools use it to start a batch of workers
with one submission, and one job per worker elsewhere (local, sfapi)."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field


class Resources(BaseModel):
    """What a job asks of the scheduler; the local backend uses ``ranks`` and ``time_limit_s`` only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int = Field(1, ge=1, le=10_000)
    ranks: int = Field(1, ge=1, le=1_000_000, description="MPI ranks (mpirun -n / srun -n)")
    cores_per_rank: int = Field(1, ge=1, le=1024)
    memory_mb: int | None = Field(None, ge=1)
    time_limit_s: int = Field(3600, ge=1, le=30 * 24 * 3600)
    partition: str | None = None
    qos: str | None = None
    account: str | None = None
    array: int | None = Field(None, ge=1, le=100_000, description="a job array of this many tasks (worker pools)")


class JobSpec(BaseModel):
    """One job to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
    command: list[str] = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    environment: dict[str, str] = Field(default_factory=dict)
    # never in a batch script, a stored spec or a log: the backend writes them to a 0600 file in the workdir and
    # passes only its path (photonstream.job_secrets); excluded from model_dump, so a stored spec has none
    secrets: dict[str, str] = Field(default_factory=dict, exclude=True, repr=False)
    workdir: str
    log_path: str | None = Field(None, description="where stdout+stderr go; default <workdir>/<name>.log")


class JobState(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"  # the backend no longer knows the job (e.g. its process vanished while nobody watched)

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


@dataclass(frozen=True, slots=True)
class JobStatus:
    job_id: str
    state: JobState
    exit_code: int | None = None
    reason: str = ""


@runtime_checkable
class JobBackend(Protocol):
    name: str

    def submit(self, spec: JobSpec) -> str: ...

    def status(self, job_id: str) -> JobStatus: ...

    def cancel(self, job_id: str) -> None: ...

    def logs(self, job_id: str, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str: ...


@runtime_checkable
class ArrayJobBackend(JobBackend, Protocol):
    """A backend that starts a batch of jobs as one array job; each task is then a job of its own to the caller."""

    def submit_array(self, specs: Sequence[JobSpec], name: str) -> list[str]: ...


def submits_arrays(backend: object) -> bool:
    """Whether ``backend`` can start several jobs as one array job (``ArrayJobBackend.submit_array``)."""
    return callable(getattr(backend, "submit_array", None))
