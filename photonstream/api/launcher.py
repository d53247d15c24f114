"""The launcher: queued streams become jobs on a JobBackend; job states become stream states.

A stream is claimed with the compare-and-set queued → starting, so with several API processes on one database
exactly one submits its job. The job runs ``photonstream run pipeline.yaml`` in the stream's workdir (one YAML per
run, run one after the other). Job states map onto stream states:

    PENDING → (stays starting)   RUNNING → streaming   COMPLETED → completed
    FAILED | LOST → failed (with the backend's reason)   CANCELLED → cancelled
"""

from __future__ import annotations

import datetime as dt
import logging
import shlex
import threading
from collections.abc import Callable
from pathlib import Path

import yaml

from photonstream.api.settings import ApiSettings
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.jobs.base import JobBackend, JobSpec, JobState, Resources
from photonstream.store.models import Stream, utcnow
from photonstream.store.streams import IllegalTransitionError, StreamState, StreamStore

log = logging.getLogger(__name__)

JOB_LOG = "job.log"
ACTOR = "launcher"


def make_backend(name: str, settings: ApiSettings) -> JobBackend:
    """A job backend by name, keeping its state under the service's state directory."""
    state_dir = settings.state_dir / "jobs"
    if name == "local":
        from photonstream.jobs.local import LocalBackend

        return LocalBackend(state_dir=state_dir, max_concurrent=settings.local_max_concurrent)
    if name == "slurm":
        from photonstream.jobs.slurm import SlurmBackend

        return SlurmBackend(state_dir=state_dir)
    if name == "sfapi":
        from photonstream.jobs.sfapi import SfApiBackend

        try:
            return SfApiBackend(state_dir=state_dir, **settings.sfapi)
        except TypeError as exc:
            raise ConfigError(f"sfapi: the settings' sfapi section does not fit the backend ({exc})") from None
    raise ConfigError(f"job_backend: {name!r} is not one of local, slurm, sfapi")


class Backends:
    """The backends this service may use, created on first use (or given, e.g. by tests)."""

    def __init__(
        self,
        settings: ApiSettings,
        given: dict[str, JobBackend] | None = None,
        factory: Callable[[str, ApiSettings], JobBackend] = make_backend,
    ) -> None:
        self.settings = settings
        self._backends: dict[str, JobBackend] = dict(given or {})
        self._factory = factory
        self._lock = threading.Lock()

    def allowed(self, name: str) -> bool:
        return name in self.settings.job_backends

    def get(self, name: str) -> JobBackend:
        if not self.allowed(name):
            raise ConfigError(f"job_backend: {name!r} is not one of {', '.join(self.settings.job_backends)}")
        with self._lock:
            if name not in self._backends:
                self._backends[name] = self._factory(name, self.settings)
            return self._backends[name]

    def close(self) -> None:
        for backend in self._backends.values():
            close = getattr(backend, "close", None)
            if callable(close):
                close()


class Launcher:
    def __init__(self, settings: ApiSettings, streams: StreamStore, backends: Backends) -> None:
        self.settings = settings
        self.streams = streams
        self.backends = backends
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one pass (tests call this directly) ------------------------------------------------------------------

    def step(self) -> None:
        for stream in self.streams.active():
            try:
                if stream.state == StreamState.QUEUED:
                    self.launch(stream)
                else:
                    self.follow(stream)
            except IllegalTransitionError:
                pass  # someone else (another process, a cancel) moved it first
            except Exception:
                log.exception("launcher: stream %s", stream.id)

    def command(self, pipelines: list[Path]) -> list[str]:
        runs = [[*self.settings.run_command, "run", str(p), "--quiet"] for p in pipelines]
        if len(runs) == 1:
            return runs[0]
        return ["/bin/sh", "-c", " && ".join(shlex.join(r) for r in runs)]

    def launch(self, stream: Stream) -> None:
        self.streams.transition(stream.id, StreamState.STARTING, "submitting the job", ACTOR, expect=StreamState.QUEUED)
        try:
            backend = self.backends.get(stream.job_backend)
            workdir = (self.settings.workdirs / stream.id).resolve()
            workdir.mkdir(parents=True, exist_ok=True)
            paths = []
            for config in stream.spec["pipelines"]:
                path = workdir / f"pipeline-run{config['stream']['run']}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                paths.append(path)
            spec = JobSpec(
                name=f"stream-{stream.id[:8]}",
                command=self.command(paths),
                resources=Resources.model_validate(stream.spec["request"]["resources"]),
                environment={"PHOTONSTREAM_STREAM_ID": stream.id},
                workdir=str(workdir),
                log_path=JOB_LOG,
            )
            job_id = backend.submit(spec)
        except (PhotonstreamError, OSError) as exc:
            self.streams.transition(stream.id, StreamState.FAILED, f"job submission failed: {exc}", ACTOR)
            return
        self.streams.set_job(stream.id, backend.name, job_id, str(workdir))
        if self.streams.get(stream.id).state == StreamState.CANCELLED:  # cancelled while we submitted
            backend.cancel(job_id)

    def follow(self, stream: Stream) -> None:
        if stream.job_id is None:
            started = stream.starting_at or stream.updated_at
            if utcnow() - started > dt.timedelta(seconds=self.settings.launch_timeout_s):
                self.streams.transition(stream.id, StreamState.FAILED, "no job was submitted (launcher lost)", ACTOR)
            return
        backend = self.backends.get(stream.job_backend)
        try:
            status = backend.status(stream.job_id)
        except LookupError:
            self.streams.transition(stream.id, StreamState.FAILED, f"job {stream.job_id} is unknown to the backend")
            return
        state = StreamState(stream.state)
        if status.state == JobState.PENDING:
            return
        if state == StreamState.STARTING and status.state in (JobState.RUNNING, JobState.COMPLETED):
            state = StreamState(self.streams.transition(stream.id, StreamState.STREAMING, "job running", ACTOR).state)
        if status.state == JobState.COMPLETED:
            self.streams.transition(stream.id, StreamState.COMPLETED, "job finished (exit code 0)", ACTOR)
        elif status.state in (JobState.FAILED, JobState.LOST):
            reason = status.reason or f"job {status.state} (exit code {status.exit_code})"
            self.streams.transition(stream.id, StreamState.FAILED, reason, ACTOR)
        elif status.state == JobState.CANCELLED:
            self.streams.transition(stream.id, StreamState.CANCELLED, status.reason or "job cancelled", ACTOR)

    # --- user actions ---------------------------------------------------------------------------------------

    def cancel(self, stream: Stream, actor: str) -> tuple[Stream, str]:
        """Cancel a stream: its state first (so it is never launched), then its job. Returns (stream, job note)."""
        if StreamState(stream.state).finished:
            raise IllegalTransitionError(f"stream {stream.id} already ended ({stream.state})")
        cancelled = self.streams.transition(stream.id, StreamState.CANCELLED, f"cancelled by {actor}", actor)
        note = ""
        if cancelled.job_id:
            try:
                self.backends.get(cancelled.job_backend).cancel(cancelled.job_id)
            except (PhotonstreamError, LookupError) as exc:
                note = f"the job backend could not cancel job {cancelled.job_id}: {exc}"
                log.warning("stream %s: %s", stream.id, note)
        return cancelled, note

    def logs(self, stream: Stream, *, tail: int | None, head: int | None, max_bytes: int) -> str:
        if not stream.job_id:
            return ""
        if head is not None:
            local = Path(stream.workdir or "") / JOB_LOG
            if stream.workdir and local.is_file():
                with local.open("rb") as fh:
                    data = fh.read(max_bytes)
                text = data.decode("utf-8", errors="replace")
            else:
                text = self.backends.get(stream.job_backend).logs(stream.job_id, None, max_bytes)
            return "".join(text.splitlines(keepends=True)[:head])
        return self.backends.get(stream.job_backend).logs(stream.job_id, tail, max_bytes)

    # --- background loop ------------------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="photonstream-launcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()
            self._wake.wait(self.settings.launcher_interval_s)
            self._wake.clear()
