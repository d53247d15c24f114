"""The launcher: queued streams become jobs on a JobBackend; job states and job reports become stream states.

A stream is claimed with the compare-and-set queued → starting, so with several API processes on one database
exactly one submits its job. The job runs ``photonstream run pipeline.yaml`` in the stream's workdir (one YAML per
run, run one after the other); its buffer handlers point at the service's buffer with the stream's producer
credential (generated at launch, granted in the buffer). The job's secrets (that credential, the report secret) go
to the backend apart from its environment: it writes them to a 0600 file in the workdir, never into a batch script
(``photonstream.job_secrets``), and the file is deleted when the stream finishes.

"streaming" means data is flowing: the job reports it (``on_report``: the buffer acked its first data message), or,
should that report be lost, the launcher sees the stream's data in the buffer. The launcher reconciles with the
backend on every pass (``launcher_interval_s``), so a lost report never leaves a stream in the wrong state:

    PENDING → (stays starting)   RUNNING → streaming once data flows (no buffer handler: at once)
    COMPLETED → completed        FAILED | LOST → failed (with the backend's reason)   CANCELLED → cancelled

A report that every run ended finishes the stream at once (completed, or failed/cancelled with the run's error).

Whenever it records ``failed`` or ``cancelled`` for a stream that writes to the buffer, the launcher also ends the
stream's addresses in the buffer with that reason (``BufferLink.end_streams``): a dead job sends no end message, and
its consumers would otherwise wait forever. The end is recorded in the store first (``stream_buffer_ends``), pending
until the buffer took it: a buffer that does not answer is asked again on later passes, by this process or, after a
restart, the next one; ``BufferLink.sync`` tells a restarted buffer the recent ends again.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import shlex
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
import zmq

from photonstream import reporting
from photonstream._data_root import DATA_ROOT_ENV
from photonstream.api.binding import data_root
from photonstream.api.pools import PoolManager
from photonstream.api.settings import ApiSettings
from photonstream.buffer.credentials import CREDENTIALS_ENV, Credentials, new_token_secret, token_hash
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.jobs.base import JobBackend, JobSpec, JobState, Resources
from photonstream.store.ends import BufferEndStore
from photonstream.store.models import Stream, StreamBufferEnd, utcnow
from photonstream.store.reports import ReportStore
from photonstream.store.streams import IllegalTransitionError, StreamState, StreamStore

if TYPE_CHECKING:
    from photonstream.api.buffer_link import BufferLink
    from photonstream.api.schemas import ReportBody

log = logging.getLogger(__name__)

JOB_LOG = "job.log"
ENDS_RETRY_S = 10.0  # how often ends the buffer did not take are offered again
ACTOR = "launcher"
REVOKED_OWNER = "cancelled: the credential that created it was revoked, or its owner disabled"


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


def uses_buffer(stream: Stream) -> bool:
    return any(h.get("type") == "buffer" for config in stream.spec.get("pipelines", []) for h in config["handlers"])


def report_path(stream_id: str) -> str:
    return f"/v1/internal/streams/{stream_id}/report"


class Launcher:
    def __init__(
        self,
        settings: ApiSettings,
        streams: StreamStore,
        backends: Backends,
        link: BufferLink | None = None,
        reports: ReportStore | None = None,
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.backends = backends
        self.link = link
        self.reports = reports or ReportStore(streams.db)
        self.pools = PoolManager(settings, streams, backends, link, self.reports)  # elastic worker pools
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ends = BufferEndStore(streams.db)  # buffer ends owed, pending until delivered (survive restarts)
        self._ends_retry_at = 0.0
        self._ends_warned: set[str] = set()
        self._ends_owed_checked = False

    # --- one pass (tests call this directly) ------------------------------------------------------------------

    def step(self) -> None:
        if self.link is not None and time.monotonic() >= self._ends_retry_at:
            try:
                if not self._ends_owed_checked:
                    self._record_ends_owed()
                    self._ends_owed_checked = True
                for end in self.ends.pending():  # also those an earlier API process could not deliver
                    if not self._deliver_end(end):  # still no buffer: the others would wait as long
                        self._ends_retry_at = time.monotonic() + ENDS_RETRY_S
                        break
            except Exception:
                log.exception("launcher: buffer ends")
        active = self.streams.active()
        gone = self._cancel_streams_of_revoked_owners(active)
        for stream in active:
            if stream.id in gone:
                continue
            try:
                if stream.state == StreamState.QUEUED:
                    self.launch(stream)
                else:
                    self.follow(stream)
            except IllegalTransitionError:
                pass  # someone else (another process, a cancel) moved it first
            except Exception:
                log.exception("launcher: stream %s", stream.id)
        try:
            self.pools.reconcile()
        except Exception:
            log.exception("launcher: worker pools")

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
            environment, job_secrets, configs = self._job_secrets(stream)
            paths = []
            for config in configs:
                path = workdir / f"pipeline-run{config['stream']['run']}.yaml"
                path.write_text(yaml.safe_dump(config, sort_keys=False))
                paths.append(path)
            spec = JobSpec(
                name=f"stream-{stream.id[:8]}",
                command=self.command(paths),
                resources=Resources.model_validate(stream.spec["request"]["resources"]),
                environment=environment,
                secrets=job_secrets,  # the backend writes them to a 0600 file, never into a script
                workdir=str(workdir),
                log_path=JOB_LOG,
            )
            job_id = backend.submit(spec)
        except (PhotonstreamError, OSError, zmq.ZMQError) as exc:
            self._finish(stream.id, StreamState.FAILED, f"job submission failed: {exc}", ACTOR)
            return
        self.streams.set_job(stream.id, backend.name, job_id, str(workdir))
        if self.streams.get(stream.id).state == StreamState.CANCELLED:  # cancelled while we submitted
            backend.cancel(job_id)

    def _job_secrets(self, stream: Stream) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
        """The job's environment (report URL, CA), its secrets (producer credential, report secret) and its pipeline
        configs, with every buffer handler pointed at the service's buffer; the producer's grant is registered in the
        buffer first."""
        environment = {reporting.STREAM_ID_ENV: stream.id}
        job_secrets: dict[str, str] = {}
        root = data_root(self.settings, stream.experiment)
        if root is not None:  # the job checks again what it opens: links and files the request could not show
            environment[DATA_ROOT_ENV] = str(root)
        configs: list[dict[str, Any]] = [dict(c) for c in stream.spec["pipelines"]]
        if self.reports.secrets(stream.id) is None:  # the request stores them with the stream, in one transaction
            raise ConfigError(f"stream {stream.id} has no stored credentials (queued by an older version)")
        report_secret = secrets.token_hex(32)
        public, secret_key = (k.decode() for k in zmq.curve_keypair())
        producer_user, producer_password = f"p.{stream.id.replace('-', '')}", new_token_secret()
        self.reports.set_job_secrets(
            stream.id,
            producer_public_key=public,
            producer_token_user=producer_user,
            producer_token_hash=token_hash(producer_password),
            report_secret=report_secret,
        )
        if self.settings.report_url:
            environment[reporting.URL_ENV] = self.settings.report_url.rstrip("/") + report_path(stream.id)
            job_secrets[reporting.SECRET_ENV] = report_secret
            ca_file = self.settings.report_ca_file or (
                self.settings.ca_dir / "ca.crt" if self.settings.ca_dir is not None else None
            )
            if ca_file is not None and self.settings.report_url.startswith("https:"):
                environment[reporting.CA_ENV] = str(Path(ca_file).resolve())
            if self.settings.report_client_cert and self.settings.report_client_key:
                environment[reporting.CERT_ENV] = str(Path(self.settings.report_client_cert).resolve())
                environment[reporting.KEY_ENV] = str(Path(self.settings.report_client_key).resolve())
        if self.link is None or not uses_buffer(stream):
            return environment, job_secrets, configs
        address, security = self.link.producer_link()
        if security == "curve":
            assert self.link.server_public_key is not None
            job_secrets[CREDENTIALS_ENV] = Credentials.curve(self.link.server_public_key, public, secret_key).to_json()
        elif security == "token":
            job_secrets[CREDENTIALS_ENV] = Credentials.token(producer_user, producer_password).to_json()
        for config in configs:
            config["handlers"] = [
                {**h, "address": address, "security": security} if h.get("type") == "buffer" else h
                for h in config["handlers"]
            ]
        self.link.register(stream.id)
        return environment, job_secrets, configs

    def _data_flowing(self, stream: Stream) -> bool:
        if self.link is None or not uses_buffer(stream):
            return True  # nothing to watch: a running job is all we know
        return self.link.data_flowing(list(stream.data_endpoint.get("streams", [])))

    def follow(self, stream: Stream) -> None:
        if stream.job_id is None:
            started = stream.starting_at or stream.updated_at
            if utcnow() - started > dt.timedelta(seconds=self.settings.launch_timeout_s):
                self._finish(stream.id, StreamState.FAILED, "no job was submitted (launcher lost)", ACTOR)
            return
        backend = self.backends.get(stream.job_backend)
        try:
            status = backend.status(stream.job_id)
        except LookupError:
            self._finish(stream.id, StreamState.FAILED, f"job {stream.job_id} is unknown to the backend", "")
            return
        state = StreamState(stream.state)
        if status.state == JobState.PENDING:
            return
        if state == StreamState.STARTING and (
            status.state == JobState.COMPLETED or (status.state == JobState.RUNNING and self._data_flowing(stream))
        ):
            why = "job running" if not uses_buffer(stream) else "data flowing (seen in the buffer)"
            state = StreamState(self.streams.transition(stream.id, StreamState.STREAMING, why, ACTOR).state)
        if status.state == JobState.COMPLETED:
            self._discard_secrets(
                self.streams.transition(stream.id, StreamState.COMPLETED, "job finished (exit code 0)", ACTOR)
            )
        elif status.state in (JobState.FAILED, JobState.LOST):
            reason = status.reason or f"job {status.state} (exit code {status.exit_code})"
            self._finish(stream.id, StreamState.FAILED, reason, ACTOR)
        elif status.state == JobState.CANCELLED:
            self._finish(stream.id, StreamState.CANCELLED, status.reason or "job cancelled", ACTOR)

    # --- reports from the job ------------------------------------------------------------------------------
    def on_report(self, stream: Stream, report: ReportBody) -> Stream:
        """A job's (verified) progress report: keep it; data flowing → streaming; every run ended → finished."""
        body = report.model_dump(mode="json")
        self.reports.save_progress(stream.id, report.address, report.phase, body)
        try:
            if StreamState(stream.state) == StreamState.STARTING and report.phase in ("streaming", "ended"):
                why = "data flowing: the buffer acked the first data message"
                if report.phase == "ended" and report.data_acked == 0 and report.events_sent == 0:
                    why = "the run ended without data"
                stream = self.streams.transition(stream.id, StreamState.STREAMING, why, "job")
            if report.phase == "ended" and StreamState(stream.state) == StreamState.STREAMING:
                stream = self._finish_if_every_run_ended(stream)
        except IllegalTransitionError:
            stream = self.streams.get(stream.id)  # the launcher or a cancel got there first
        return stream

    def _finish_if_every_run_ended(self, stream: Stream) -> Stream:
        ends = {p.address: p.report.get("end") or {} for p in self.reports.progress(stream.id) if p.phase == "ended"}
        addresses = list(stream.data_endpoint.get("streams", []))
        if not addresses or any(a not in ends for a in addresses):
            return stream
        reasons = [ends[a].get("reason") for a in addresses]
        errors = "; ".join(f"{a}: {ends[a].get('error')}" for a in addresses if ends[a].get("error"))
        if "failed" in reasons:
            return self._finish(stream.id, StreamState.FAILED, errors or "a run failed", "job")
        if "cancelled" in reasons:
            return self._finish(stream.id, StreamState.CANCELLED, errors or "a run was cancelled", "job")
        sent = sum(int(ends[a].get("events_sent", 0)) for a in addresses)
        done = self.streams.transition(stream.id, StreamState.COMPLETED, f"every run ended ({sent} events)", "job")
        self._discard_secrets(done)
        return done

    # --- user actions ---------------------------------------------------------------------------------------

    def cancel(self, stream: Stream, actor: str, why: str = "") -> tuple[Stream, str]:
        """Cancel a stream: its state first (so it is never launched), then its job. Returns (stream, job note)."""
        if StreamState(stream.state).finished:
            raise IllegalTransitionError(f"stream {stream.id} already ended ({stream.state})")
        cancelled = self.streams.transition(stream.id, StreamState.CANCELLED, why or f"cancelled by {actor}", actor)
        self.pools.stop_stream(stream.id, f"stream cancelled by {actor}")
        note = ""
        if cancelled.job_id:
            try:
                self.backends.get(cancelled.job_backend).cancel(cancelled.job_id)
            except (PhotonstreamError, LookupError) as exc:
                note = f"the job backend could not cancel job {cancelled.job_id}: {exc}"
                log.warning("stream %s: %s", stream.id, note)
        self._discard_secrets(cancelled)
        self._end_in_buffer(cancelled, why or f"cancelled by {actor}")  # after the job: it may not write any more
        return cancelled, note

    def _cancel_streams_of_revoked_owners(self, active: list[Stream]) -> set[str]:
        """Cancel the active streams whose owner no longer holds (the credential that created the stream revoked,
        in the database or on the CA's CRL, or the owner disabled). Their grants are withdrawn first, so consumers
        reading them are dropped at once; the job is stopped rather than left to fail on its refused producer."""
        try:
            revoked_elsewhere = self.link.revoked_elsewhere() if self.link is not None else frozenset()
        except PhotonstreamError as exc:  # a CRL that does not verify: the database's revocations still count
            log.warning("launcher: the CA's revocation list was not read: %s", exc)
            revoked_elsewhere = frozenset()
        gone = self.reports.owner_gone(active, revoked_elsewhere)
        if not gone:
            return set()
        if self.link is not None:
            try:
                self.link.sync()
            except (PhotonstreamError, zmq.ZMQError) as exc:
                log.warning("launcher: grants of revoked owners not withdrawn yet (the next sync will): %s", exc)
        for stream in gone:
            try:
                self.cancel(stream, ACTOR, REVOKED_OWNER)
            except IllegalTransitionError:
                pass  # cancelled or finished meanwhile
            except Exception:
                log.exception("launcher: cancelling stream %s of a revoked owner", stream.id)
        return {stream.id for stream in gone}

    # --- ends in the buffer ---------------------------------------------------------------------------------

    def _finish(self, stream_id: str, state: StreamState, reason: str, actor: str) -> Stream:
        """Record failed or cancelled, then end the stream in the buffer with the same reason."""
        finished = self.streams.transition(stream_id, state, reason, actor)
        self._discard_secrets(finished)
        self._end_in_buffer(finished, reason)
        return finished

    def _record_ends_owed(self) -> None:
        """Streams that an earlier API process recorded failed or cancelled but died before it recorded their end
        in the buffer: record it now (pending), so the next delivery round sends it."""
        after = utcnow() - dt.timedelta(seconds=self.settings.buffer_grant_keep_s)
        for stream in self.streams.finished_since(after, (StreamState.FAILED.value, StreamState.CANCELLED.value)):
            if uses_buffer(stream) and self.ends.get(stream.id) is None:
                addresses = list(stream.data_endpoint.get("streams", []))
                self.ends.record(stream.id, addresses, stream.state, stream.reason or stream.state)

    def _discard_secrets(self, stream: Stream) -> None:
        """The stream finished: its job's secrets file is deleted (its log is kept)."""
        if not stream.job_id:
            return
        try:
            discard = getattr(self.backends.get(stream.job_backend), "discard_secrets", None)
            if discard is not None:
                discard(stream.job_id)
        except (PhotonstreamError, LookupError, OSError) as exc:
            log.warning("stream %s: its job's secrets file was not deleted: %s", stream.id, exc)

    def _end_in_buffer(self, stream: Stream, reason: str) -> None:
        if self.link is None or not uses_buffer(stream):
            return
        addresses = list(stream.data_endpoint.get("streams", []))
        self._deliver_end(self.ends.record(stream.id, addresses, StreamState(stream.state).value, reason))

    def _deliver_end(self, end: StreamBufferEnd) -> bool:
        """Send a recorded end to the buffer; once it took it, the end is marked delivered."""
        assert self.link is not None
        try:
            self.link.end_streams(list(end.addresses), end.state, end.reason)
        except (PhotonstreamError, zmq.ZMQError) as exc:
            if end.stream_id not in self._ends_warned:
                self._ends_warned.add(end.stream_id)
                log.warning("stream %s: could not end it in the buffer (will retry): %s", end.stream_id, exc)
            return False
        self.ends.mark_delivered(end.stream_id)
        self._ends_warned.discard(end.stream_id)
        return True

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
        self.pools.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before the pass, so a wake() during it (a new stream) starts the next one at once
            self.step()
            self._wake.wait(self.settings.launcher_interval_s)
