"""Elastic worker pools: consumer workers that grow and shrink with their group's lag in the buffer.

A ``WorkerPool`` (part of a stream request) describes one worker -- an argv template with ``{endpoint}``,
``{stream}``, ``{group}``, ``{pool}``, ``{worker}`` and ``{index}`` placeholders, and its resources -- and the
bounds of the pool: ``min_workers`` .. ``max_workers`` and the lag (messages of the group not yet finished) it
aims at. An ``ElasticPool`` runs it through any ``JobBackend``. Each worker is one backend job to the pool, but a
batch of new workers (``min_workers`` at the start, each scale-up step) is submitted as ONE array job where the
backend can (``submits_arrays``: Slurm, ``sbatch --array=0-N`` with one task per worker, each with its own
command, ``PHOTONSTREAM_WORKER`` and log); its tasks' ids (``JOBID_TASK``) are the workers' job ids, so every
task is watched, cancelled (``scancel JOBID_TASK``: scale-down removes one task, the others keep running) and
replaced on its own, and events list task ids. A single new worker (one more, a replacement) is a plain job;
backends without arrays (local, sfapi) get one job per worker. Each ``tick()`` is one decision:

- workers that ended FAILED or LOST while there is still work are replaced at once (up to ``max_failures``);
- fewer than ``min_workers`` live: start workers up to the minimum;
- lag above ``target_lag`` for ``scale_up_cooldown_s`` (and as long since the last change): start
  ``ceil(workers * (lag / target - 1))`` more, at least 1, at most ``max_step``, never past ``max_workers``;
  not while a worker is still waiting in the scheduler's queue (more would only queue too), nor while the group
  has fewer members than the pool has workers (the last ones are still starting), for up to ``join_timeout_s``;
- lag below ``scale_down_below * target_lag`` for ``scale_down_cooldown_s``: cancel the newest worker, one at a
  time, never below ``min_workers``. In a lossless group no frame is lost: the buffer hands the unacked messages
  of a member that leaves (or goes silent) to the others;
- the stream ended and the group drained: workers get ``stop_grace_s`` to finish on their own, then the rest are
  cancelled, and the pool is done.

Every decision is a ``PoolEvent`` (time, action, workers, lag), logged, kept in ``events()`` and passed to
``on_event`` for the API to record. ``run(stop_event)`` ticks every ``interval_s`` in a thread.
"""

from __future__ import annotations

import logging
import math
import string
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from photonstream.config.environment import POOL_ENV, WORKER_ENV
from photonstream.errors import PhotonstreamError
from photonstream.jobs.base import ArrayJobBackend, JobBackend, JobSpec, JobState, Resources, submits_arrays

log = logging.getLogger(__name__)

PLACEHOLDERS = ("endpoint", "stream", "group", "pool", "worker", "index")
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
EVENTS_KEPT = 2000
CANCEL_THREADS = 8  # workers of one pool cancelled at once when it stops
ACTIONS = (
    "start-worker",  # fewer than min_workers were live
    "scale-up",
    "scale-down",
    "replace",  # a worker failed or was lost while there was work left
    "worker-ended",  # a worker ended on its own (completed, or cancelled by someone else)
    "lag-unknown",  # the buffer did not answer, or does not know the stream or group (yet)
    "lag-back",
    "give-up",  # more than max_failures workers failed: no more replacements
    "error",
    "stream-drained",  # the stream ended and the group finished it: workers get stop_grace_s
    "stopped",
)


class WorkerPool(BaseModel):
    """A pool of identical consumer workers for one consumer group, sized by the group's lag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME, description="pool name, unique in the request, e.g. indexers")
    group: str = Field(pattern=NAME, description="the consumer group the workers join (its lag sizes the pool)")
    command: list[str] = Field(
        min_length=1,
        max_length=256,
        description="one worker's argv; placeholders {endpoint} {stream} {group} {pool} {worker} {index}",
    )
    resources: Resources = Field(default_factory=Resources, description="what one worker asks of the scheduler")
    environment: dict[str, str] = Field(default_factory=dict, description="extra environment of each worker")
    min_workers: int = Field(
        1, ge=1, le=10_000, description="workers kept running while the stream runs (the group exists once one joins)"
    )
    max_workers: int = Field(8, ge=1, le=10_000, description="never more workers than this")
    target_lag: int = Field(100, ge=1, description="messages of the group not yet finished that the pool aims at")
    scale_down_below: float = Field(
        0.25, gt=0.0, lt=1.0, description="remove a worker while lag stays below this fraction of target_lag"
    )
    scale_up_cooldown_s: float = Field(10.0, ge=0.0, le=86_400.0, description="lag above target this long: add")
    scale_down_cooldown_s: float = Field(30.0, ge=0.0, le=86_400.0, description="lag well below this long: remove")
    max_step: int = Field(4, ge=1, le=10_000, description="most workers added in one decision")
    max_failures: int = Field(10, ge=0, le=10_000, description="failed workers replaced before the pool gives up")
    stop_grace_s: float = Field(
        30.0, ge=0.0, le=86_400.0, description="after the group drained, how long workers may take to end"
    )
    interval_s: float = Field(2.0, gt=0.0, le=3600.0, description="seconds between two decisions")
    join_timeout_s: float = Field(
        60.0, ge=0.0, le=86_400.0, description="how long new workers may take to join before the pool adds more"
    )
    replace_completed: bool = Field(
        True, description="start workers again after one completed while the group has work (False: a run-once pool)"
    )

    @field_validator("command")
    @classmethod
    def _known_placeholders(cls, command: list[str]) -> list[str]:
        for argument in command:
            try:
                fields = {field for _, field, _, _ in string.Formatter().parse(argument) if field is not None}
            except ValueError as error:
                hint = "write a literal brace as {{ or }}"
                raise ValueError(f"command argument {argument!r}: {error} ({hint})") from None
            unknown = sorted(fields - set(PLACEHOLDERS))
            if unknown:
                raise ValueError(
                    f"command argument {argument!r}: unknown placeholder(s) {', '.join(unknown)}; "
                    f"known: {', '.join(PLACEHOLDERS)}"
                )
        return command

    @model_validator(mode="after")
    def _bounds(self) -> WorkerPool:
        if self.min_workers > self.max_workers:
            raise ValueError(f"min_workers ({self.min_workers}) exceeds max_workers ({self.max_workers})")
        if self.resources.array is not None:
            raise ValueError("resources.array: the pool forms its own arrays (one task per worker); leave array unset")
        return self

    def argv(self, **values: Any) -> list[str]:
        """One worker's command with the placeholders filled in."""
        return [argument.format(**values) for argument in self.command]


@dataclass(frozen=True, slots=True)
class LagReading:
    """What the buffer says of a group: unfinished messages, members, and whether the stream is over for it."""

    lag: int
    members: int
    stream_ended: bool = False
    drained: bool = False  # the stream ended and the group has finished (acked) every message


LagReader = Callable[[], "LagReading | None"]  # None: the buffer does not know the stream or group (yet)


class BufferLagReader:
    """Reads a group's lag from the buffer's stats (``photonstream buffer stats``), by ``fetch_stats``.

    ``fetch_options`` go to the fetch function (e.g. a timeout, or credentials where the buffer wants them).
    The stats of an authenticating buffer show a stream only to its owner or an admin: use the API's key.
    """

    def __init__(
        self,
        endpoint: str,
        stream: str,
        group: str,
        fetch: Callable[..., dict[str, Any]] | None = None,
        **fetch_options: Any,
    ) -> None:
        if fetch is None:
            from photonstream.buffer.cli import fetch_stats

            fetch = fetch_stats
        self.endpoint = endpoint
        self.stream = stream
        self.group = group
        self.fetch = fetch
        self.fetch_options = {"timeout_s": 2.0, **fetch_options}

    def __call__(self) -> LagReading | None:
        return reading_from_stats(self.fetch(self.endpoint, **self.fetch_options), self.stream, self.group)


def reading_from_stats(stats: dict[str, Any], stream: str, group: str) -> LagReading | None:
    """The ``LagReading`` of ``group`` of ``stream`` in a buffer stats tree; None when either is absent."""
    stream_stats = stats.get("streams", {}).get(stream)
    if stream_stats is None:
        return None
    group_stats = stream_stats.get("groups", {}).get(group)
    if group_stats is None:
        return None
    lag = int(group_stats.get("lag", 0))
    ended = bool(stream_stats.get("ended"))
    drained = ended and (bool(group_stats.get("ended")) or lag == 0)
    return LagReading(lag=lag, members=int(group_stats.get("members", 0)), stream_ended=ended, drained=drained)


@dataclass(frozen=True, slots=True)
class PoolEvent:
    """One decision of a pool: what it did, the workers it has after it, and the lag it decided on."""

    time: float  # seconds since the epoch
    pool: str
    action: str  # one of ACTIONS
    workers: int
    lag: int | None
    members: int | None = None
    detail: str = ""
    jobs: tuple[str, ...] = ()  # backend job ids this decision started or cancelled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Worker:
    index: int
    name: str
    job_id: str
    submitted_at: float
    state: JobState = JobState.PENDING


class ElasticPool:
    """Keeps one ``WorkerPool`` sized by its group's lag, through ``backend``; see the module docstring.

    ``endpoint`` and ``stream`` fill the command's placeholders; ``workdir`` is each worker's working directory
    (logs: ``<workdir>/<job name>.log``); ``job_prefix`` starts every job name (e.g. ``stream-1a2b3c4d``).
    ``clock`` (monotonic seconds) is injectable so that tests decide cooldowns, not the wall clock.
    ``reading_max_age_s``: how old a lag reading may be (the embedded buffer's stats are a snapshot of the last
    second). A worker that ends on its own has normally seen its group's end; for that long after, the pool does
    not start workers to keep ``min_workers`` on the strength of a reading that may predate the worker's last acks.
    """

    def __init__(
        self,
        pool: WorkerPool,
        backend: JobBackend,
        lag_reader: LagReader,
        *,
        endpoint: str,
        stream: str,
        workdir: str | Path,
        job_prefix: str = "pool",
        environment: dict[str, str] | None = None,
        secrets: dict[str, str] | None = None,
        on_event: Callable[[PoolEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        reading_max_age_s: float = 0.0,
    ) -> None:
        self.pool = pool
        self.backend = backend
        self.lag_reader = lag_reader
        self.endpoint = endpoint
        self.stream = stream
        self.workdir = str(workdir)
        self.job_prefix = job_prefix
        self.environment = dict(environment or {})
        self.secrets = dict(secrets or {})  # each worker's JobSpec.secrets (a 0600 file, never its environment)
        self.on_event = on_event
        self.clock = clock
        self.reading_max_age_s = reading_max_age_s
        self.workers: list[Worker] = []  # live ones, oldest first
        self.started: list[Worker] = []  # every worker the pool started (for logs, and to check on them)
        self.failures = 0
        self.done = False
        self._next_index = 0
        self._events: deque[PoolEvent] = deque(maxlen=EVENTS_KEPT)
        self._emitted = 0
        self._events_lock = threading.Lock()  # apart from the decisions' lock: reading never waits on a scheduler
        self._lock = threading.RLock()
        self._last_change: float | None = None
        self._above_since: float | None = None
        self._below_since: float | None = None
        self._lag_known = True
        self._drained_at: float | None = None
        self._gave_up = False
        self._last_reading: LagReading | None = None
        self._completed_at: float | None = None  # when a worker last ended on its own (completed)
        self._completed = 0

    # --- what others read ------------------------------------------------------------------------------------

    def events(self) -> list[PoolEvent]:
        with self._events_lock:
            return list(self._events)

    def job_ids(self, live_only: bool = True) -> list[str]:
        """The backend job ids of the live workers (or of every worker started)."""
        return [worker.job_id for worker in list(self.workers if live_only else self.started)]

    # --- decisions -------------------------------------------------------------------------------------------

    def tick(self) -> list[PoolEvent]:
        """Look at the workers and the lag once, and act; returns the events of this decision."""
        with self._lock:
            if self.done:
                return []
            before = self._emitted
            now = self.clock()
            reading = self._read()
            if completed := self._reap(reading):
                self._completed += completed
                # a worker that ended on its own has usually seen the group's end: the reading taken before may
                # predate its last acks, and would have the minimum kept with workers that get nothing to do
                self._completed_at = now
                if reading is None or not reading.drained:
                    reading = self._read()
            if reading is not None and reading.drained:
                self._finish(reading, now)
            else:
                self._keep_minimum(reading, now)
                if reading is not None:
                    self._scale(reading, now)
            new = self._emitted - before
            return self.events()[-new:] if new else []

    def stop(self, reason: str = "stopped") -> None:
        """Cancel every worker now (the stream was cancelled or failed, or the API shuts the pool down)."""
        with self._lock:
            if self.done:
                return
            cancelled = self._cancel_all()
            self.done = True
            detail = f"{reason}; cancelled {cancelled} worker(s)" if cancelled else reason
            self._emit("stopped", self._last_reading, detail)

    def run(self, stop_event: threading.Event) -> None:
        """Tick every ``interval_s`` until the pool is done or ``stop_event`` is set (then stop every worker)."""
        while not self.done:
            try:
                self.tick()
            except Exception as error:  # one bad decision must not end the pool's watch over its workers
                log.exception("pool %s: tick failed", self.pool.name)
                self._emit("error", self._last_reading, f"tick failed: {error}")
            if stop_event.wait(self.pool.interval_s):
                self.stop("stop requested")

    # --- internals -------------------------------------------------------------------------------------------

    def _read(self) -> LagReading | None:
        try:
            reading = self.lag_reader()
        except Exception as error:  # the buffer down, a timeout, garbled stats: hold, and say why once
            reading, why = None, f"cannot read the lag: {error}"
        else:
            why = "the buffer does not know the stream or group yet"
        if reading is None:
            if self._lag_known:
                self._lag_known = False
                self._emit("lag-unknown", None, why)
            self._above_since = self._below_since = None
            return None
        if not self._lag_known:
            self._lag_known = True
            self._emit("lag-back", reading)
        self._last_reading = reading
        return reading

    def _reap(self, reading: LagReading | None) -> int:
        """Forget workers that ended; replace the ones that failed while there is work left. Returns how many ended
        on their own (completed)."""
        completed = 0
        for worker in list(self.workers):
            try:
                status = self.backend.status(worker.job_id)
            except (PhotonstreamError, LookupError) as error:
                self._emit("error", reading, f"status of {worker.name} ({worker.job_id}): {error}")
                continue
            worker.state = status.state
            if not status.state.finished:
                continue
            self.workers.remove(worker)
            first_line = status.reason.splitlines()[0] if status.reason else f"exit code {status.exit_code}"
            detail = f"{worker.name} ({worker.job_id}) {status.state}: {first_line}"
            work_left = reading is None or not reading.drained
            if status.state in (JobState.FAILED, JobState.LOST) and work_left and self._drained_at is None:
                self.failures += 1
                if self.failures > self.pool.max_failures:
                    self._give_up(reading, detail)
                    continue
                self._start_workers(1, "replace", reading, detail)
            else:
                completed += status.state == JobState.COMPLETED
                self._emit("worker-ended", reading, detail)
        return completed

    def _give_up(self, reading: LagReading | None, detail: str) -> None:
        if not self._gave_up:
            self._gave_up = True
            self._emit("give-up", reading, f"{detail}; {self.failures} workers failed, replacing no more")

    def _keep_minimum(self, reading: LagReading | None, now: float) -> None:
        missing = self.pool.min_workers - len(self.workers)
        if missing <= 0 or self._gave_up or (self._completed and not self.pool.replace_completed):
            return
        if self._completed_at is not None and now - self._completed_at < self.reading_max_age_s:
            return  # a worker just ended on its own: wait for a reading that is newer than its end
        if self._start_workers(missing, "start-worker", reading, f"keeping at least {self.pool.min_workers}"):
            self._last_change = now

    def _scale(self, reading: LagReading, now: float) -> None:
        pool, lag, count = self.pool, reading.lag, len(self.workers)
        since_change = math.inf if self._last_change is None else now - self._last_change
        if lag > pool.target_lag:
            self._below_since = None
            if self._above_since is None:
                self._above_since = now
            queued = any(worker.state == JobState.PENDING for worker in self.workers)
            joining = reading.members < count and since_change < pool.join_timeout_s
            waiting = queued or joining
            sustained = now - self._above_since >= pool.scale_up_cooldown_s
            if sustained and since_change >= pool.scale_up_cooldown_s and count < pool.max_workers and not waiting:
                wanted = math.ceil(max(count, 1) * (lag / pool.target_lag - 1.0))
                step = min(max(wanted, 1), pool.max_step, pool.max_workers - count)
                if not self._gave_up:
                    detail = f"lag {lag} above target {pool.target_lag} for {now - self._above_since:.3g} s"
                    self._start_workers(step, "scale-up", reading, detail)
                    self._last_change = self._above_since = now
        elif lag < pool.scale_down_below * pool.target_lag:
            self._above_since = None
            if self._below_since is None:
                self._below_since = now
            sustained = now - self._below_since >= pool.scale_down_cooldown_s
            if sustained and since_change >= pool.scale_down_cooldown_s and count > pool.min_workers:
                newest = self.workers[-1]
                threshold = pool.scale_down_below * pool.target_lag
                detail = f"lag {lag} below {threshold:g} for {now - self._below_since:.3g} s; removed {newest.name}"
                if self._cancel(newest, reading):
                    self._emit("scale-down", reading, detail, (newest.job_id,))
                self._last_change = self._below_since = now
        else:
            self._above_since = self._below_since = None

    def _finish(self, reading: LagReading, now: float) -> None:
        if self._drained_at is None:
            self._drained_at = now
            self._emit("stream-drained", reading, f"waiting up to {self.pool.stop_grace_s:g} s for workers to end")
        if not self.workers:
            self.done = True
            self._emit("stopped", reading, "every worker ended")
        elif now - self._drained_at >= self.pool.stop_grace_s:
            cancelled = self._cancel_all()
            self.done = True
            self._emit("stopped", reading, f"cancelled {cancelled} worker(s) still running after the grace")

    def _start_workers(self, count: int, action: str, reading: LagReading | None, detail: str) -> int:
        count = min(count, self.pool.max_workers - len(self.workers))
        if count <= 0:
            return 0
        if count > 1 and submits_arrays(self.backend):
            started = self._submit_array(count, reading)
        else:
            started = []
            for _ in range(count):
                worker = self._submit(reading)
                if worker is None:
                    break
                started.append(worker)
        if started:
            names = ", ".join(worker.name for worker in started)
            self._emit(action, reading, f"{detail}; started {names}", tuple(worker.job_id for worker in started))
        return len(started)

    def _job_name(self, suffix: int | str) -> str:
        return f"{self.job_prefix}-{self.pool.name}-{suffix}"

    def _worker_spec(self) -> tuple[int, JobSpec]:
        """The next worker's index and job (ValueError where its command or name does not make a valid job)."""
        index = self._next_index
        self._next_index += 1
        name = self._job_name(index)
        values = {
            "endpoint": self.endpoint,
            "stream": self.stream,
            "group": self.pool.group,
            "pool": self.pool.name,
            "worker": name,
            "index": index,
        }
        spec = JobSpec(
            name=name,
            command=self.pool.argv(**values),
            resources=self.pool.resources,
            environment={
                **self.environment,
                **self.pool.environment,
                POOL_ENV: self.pool.name,
                WORKER_ENV: name,
            },
            secrets=self.secrets,
            workdir=self.workdir,
        )
        return index, spec

    def _submit(self, reading: LagReading | None) -> Worker | None:
        name = self._job_name(self._next_index)
        try:
            index, spec = self._worker_spec()
            job_id = self.backend.submit(spec)
        except (PhotonstreamError, OSError, ValueError) as error:
            self._submit_failed(reading, name, error)
            return None
        return self._track(index, spec.name, job_id)

    def _submit_array(self, count: int, reading: LagReading | None) -> list[Worker]:
        """``count`` workers as one array job; each task is then a worker of its own (status, cancel, replace)."""
        name = self._job_name(f"array{self._next_index}")
        try:
            batch = [self._worker_spec() for _ in range(count)]
            task_ids = cast(ArrayJobBackend, self.backend).submit_array([spec for _, spec in batch], name)
            if len(task_ids) != count:
                raise PhotonstreamError(f"the backend answered {len(task_ids)} task ids for {count} tasks")
        except (PhotonstreamError, OSError, ValueError) as error:
            self._submit_failed(reading, name, error)
            return []
        return [self._track(index, spec.name, job_id) for (index, spec), job_id in zip(batch, task_ids, strict=True)]

    def _submit_failed(self, reading: LagReading | None, name: str, error: Exception) -> None:
        self.failures += 1
        self._emit("error", reading, f"could not submit {name}: {error}")
        if self.failures > self.pool.max_failures:
            self._give_up(reading, f"submitting {name} failed")

    def _track(self, index: int, name: str, job_id: str) -> Worker:
        worker = Worker(index=index, name=name, job_id=job_id, submitted_at=time.time())
        self.workers.append(worker)
        self.started.append(worker)
        return worker

    def _cancel(self, worker: Worker, reading: LagReading | None) -> bool:
        return self._cancelled(worker, self._cancel_job(worker), reading)

    def _cancel_job(self, worker: Worker) -> Exception | None:
        try:
            self.backend.cancel(worker.job_id)
        except (PhotonstreamError, LookupError) as error:
            return error
        return None

    def _cancelled(self, worker: Worker, error: Exception | None, reading: LagReading | None) -> bool:
        if error is not None:
            self._emit("error", reading, f"could not cancel {worker.name} ({worker.job_id}): {error}")
            return False
        self.workers.remove(worker)
        return True

    def _cancel_all(self) -> int:
        """Cancel every live worker at once (a cancel waits until the worker's processes are gone: one after the
        other, N workers would take N grace periods), at most ``CANCEL_THREADS`` at a time."""
        workers = list(reversed(self.workers))
        if len(workers) <= 1:
            errors = [self._cancel_job(worker) for worker in workers]
        else:
            with ThreadPoolExecutor(min(CANCEL_THREADS, len(workers)), thread_name_prefix="pool-cancel") as threads:
                errors = list(threads.map(self._cancel_job, workers))
        return sum(self._cancelled(w, e, self._last_reading) for w, e in zip(workers, errors, strict=True))

    def _emit(self, action: str, reading: LagReading | None, detail: str = "", jobs: tuple[str, ...] = ()) -> None:
        event = PoolEvent(
            time=time.time(),
            pool=self.pool.name,
            action=action,
            workers=len(self.workers),
            lag=None if reading is None else reading.lag,
            members=None if reading is None else reading.members,
            detail=detail,
            jobs=jobs,
        )
        with self._events_lock:
            self._events.append(event)
            self._emitted += 1
        log.info("pool %s: %s (workers %d, lag %s) %s", event.pool, action, event.workers, event.lag, detail)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # the API's recorder failing must not stop the pool
                log.exception("pool %s: on_event failed", self.pool.name)
