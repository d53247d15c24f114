"""Elastic worker pools of streams: checked when a stream is requested, run while it streams, stopped when it ends.

A request's ``worker_pools`` each name a lossless consumer group of the request, a worker *kind* from the service's
catalog (``photonstream.api.worker_kinds``; a request never names a command) with its options, and the pool's
bounds. ``check_pool_requests`` refuses what cannot run: 422 naming the field (unknown group, a group that is not
lossless, two pools on one group, an unknown kind or option, a value its pattern refuses, more workers than
``max_pool_workers_per_request``), 403 for a kind the caller's roles may not run. Only lossless groups are scaled:
their members share the work and ack it, so the lag is work left to do; in latest/decimate/sample groups the buffer
skips what a slow group has not read, and more workers would not change what gets done.

``PoolManager`` (driven by the launcher's pass, ``reconcile``) runs one ``photonstream.jobs.elastic.ElasticPool``
per requested pool, on the stream's job backend, once the stream is ``streaming`` (or, should it have ended before
the launcher looked, once it ``completed``: its data waits in the buffer). Each pool reads its group's lag with the
API's admin access (the embedded buffer's own stats, or the control link to an external buffer). The workers read
with a credential made for them when the pools start (granted as a consumer of the stream in the buffer, passed as
the job's secret ``PHOTONSTREAM_BUFFER_CREDENTIALS``: a 0600 file the job's environment names, never its command
line, environment or stored spec, see ``photonstream.job_secrets``; withdrawn when the pools end). Every decision
is stored (``stream_pool_events``) and served by ``GET /v1/streams/{id}/pools`` and the stream's event feed.

When the stream ends: cancelled or failed → the workers are cancelled at once; completed → the pool stops on its
own once the group drained (after ``stop_grace_s``), or after ``pool_drain_timeout_s`` whatever the buffer says.

One API process runs the pools of every stream on a database: the holder of the lease ``pools``
(``photonstream.store.leases``), which its launcher claims on every pass for ``pool_lease_s`` more. Another API
process with the launcher on the same database runs none while the lease is held, and takes the pools over on its
first pass after the lease expired (its holder was killed, hung, or lost the database). A holder's pool threads stop
watching by themselves once its lease has run out unrenewed (leaving the workers: the next holder cancels them).

Across a change of holder, or an API restart, nothing of a pool survives but its events. When the API stops, its
pools cancel their workers (recorded as ``interrupted``) and it gives the lease up. On its first pass as holder an
API cancels the leftover worker jobs of every pool whose last event is not ``stopped`` (a killed or superseded
holder left them running), records ``stopped``, and starts fresh pools (with a fresh credential) for those streams
still streaming, or completed within the drain timeout. In a lossless group no frame is lost by this: what a
cancelled worker had not acked goes back to the group.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from photonstream import reporting
from photonstream.api.errors import PermissionDeniedError
from photonstream.api.worker_kinds import WorkerKind, merged_worker_kinds
from photonstream.buffer.credentials import CREDENTIALS_ENV, Credentials, new_token_secret, token_hash
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.jobs.elastic import ElasticPool, LagReading, PoolEvent, WorkerPool, reading_from_stats
from photonstream.store.leases import Claim, LeaseStore
from photonstream.store.models import Stream, utcnow
from photonstream.store.pools import PoolEventStore
from photonstream.store.streams import StreamState, StreamStore

if TYPE_CHECKING:
    from photonstream.api.auth.principal import Principal
    from photonstream.api.buffer_link import BufferLink
    from photonstream.api.launcher import Backends
    from photonstream.api.schemas import PoolRequest, StreamRequest
    from photonstream.api.settings import ApiSettings
    from photonstream.store.reports import ReportStore

log = logging.getLogger(__name__)

STOPPED = "stopped"
EMBEDDED_STATS_AGE_S = 1.0  # the embedded buffer's stats() is its snapshot of the last second
LEASE = "pools"
STOP_THREADS = 4  # pools stopped at once (each cancels up to elastic.CANCEL_THREADS workers at once)
LEASE_MARGIN = 0.1  # a holder's pools stop watching this fraction of pool_lease_s before the lease runs out
INTERRUPTED = "interrupted"  # the API stopped while the pool ran: its workers were cancelled; a restart resumes it


# --- checking a request ---------------------------------------------------------------------------------------


def requested_workers(spec: dict[str, Any]) -> int:
    """The most workers a stored stream's pools may run at once (max_workers summed)."""
    return sum(int(pool.get("max_workers", 0)) for pool in spec.get("request", {}).get("worker_pools", []))


def pool_options(index: int, pool: PoolRequest, kind: WorkerKind) -> dict[str, str]:
    """The kind's option values for ``pool``: given ones checked by their patterns, defaults for the rest."""
    where = f"worker_pools[{index}].options"
    unknown = sorted(set(pool.options) - set(kind.options))
    if unknown:
        known = ", ".join(sorted(kind.options)) or "none"
        raise ConfigError(f"{where}.{unknown[0]}: not an option of worker kind {pool.kind!r} (its options: {known})")
    values = {}
    for name, option in kind.options.items():
        value = pool.options.get(name, option.default)
        if value is None:
            raise ConfigError(f"{where}.{name}: worker kind {pool.kind!r} needs it ({option.description or name})")
        if not re.fullmatch(option.pattern, value):
            raise ConfigError(f"{where}.{name}: {value!r} does not match {option.pattern}")
        values[name] = value
    return values


def check_pool_requests(body: StreamRequest, settings: ApiSettings, principal: Principal) -> None:
    """Refuse pools that cannot run (see the module docstring); returns quietly for a request without pools."""
    if not body.worker_pools:
        return
    if len(body.runs) > 1:
        runs = len(body.runs)
        raise ConfigError(f"worker_pools: a stream with worker pools reads one run (this one asks for {runs})")
    groups = {group.name: group for group in body.consumers}
    kinds = merged_worker_kinds(settings.worker_kinds)
    names: set[str] = set()
    pooled: set[str] = set()
    for index, pool in enumerate(body.worker_pools):
        where = f"worker_pools[{index}]"
        if pool.name in names:
            raise ConfigError(f"{where}.name: {pool.name!r} names another pool of this request")
        names.add(pool.name)
        group = groups.get(pool.group)
        if group is None:
            raise ConfigError(
                f"{where}.group: {pool.group!r} is not a consumer group of this request "
                f"(consumers: {', '.join(groups)})"
            )
        if group.policy != "lossless":
            raise ConfigError(
                f"{where}.group: group {pool.group!r} has policy {group.policy}; only lossless (work-sharing, acked) "
                "groups are scaled by their lag"
            )
        kind = kinds.get(pool.kind)
        if kind is None:
            raise ConfigError(f"{where}.kind: {pool.kind!r} is not a worker kind of this service "
                              f"(kinds: {', '.join(sorted(kinds))})")  # fmt: skip
        if not kind.single:  # a single kind's pool only follows its group's end; it may share it
            if pool.group in pooled:
                raise ConfigError(f"{where}.group: group {pool.group!r} has a pool already (one pool per group)")
            pooled.add(pool.group)
        if kind.roles is not None and not set(kind.roles) & set(principal.roles):
            raise PermissionDeniedError(
                f"{where}.kind: worker kind {pool.kind!r} is for the roles {', '.join(kind.roles)}; "
                f"{principal.identity!r} holds {', '.join(sorted(principal.roles))}"
            )
        pool_options(index, pool, kind)
    total = sum(1 if kinds[pool.kind].single else pool.max_workers for pool in body.worker_pools)
    if total > settings.max_pool_workers_per_request:
        raise ConfigError(
            f"worker_pools: {total} workers in all (max_workers summed) is more than this service runs for one "
            f"request (max_pool_workers_per_request {settings.max_pool_workers_per_request})"
        )


def worker_pool(index: int, pool: PoolRequest, kind: WorkerKind, run_command: list[str], artifacts: Path) -> WorkerPool:
    """The elastic pool that runs ``pool`` (a checked request) with ``kind``'s command; ``artifacts`` is the
    stream's folder for what the workers write for the API (``{artifacts}``)."""
    tuning = pool.model_dump(exclude={"name", "group", "kind", "options", "resources"})
    if kind.single:
        tuning.update(min_workers=1, max_workers=1, replace_completed=False)
    values = {**pool_options(index, pool, kind), "artifacts": str(artifacts)}
    command = kind.template(values, run_command)
    return WorkerPool(name=pool.name, group=pool.group, command=command, resources=pool.resources, **tuning)


# --- running pools ----------------------------------------------------------------------------------------------


@dataclass
class RunningPool:
    elastic: ElasticPool
    halt: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


class PoolManager:
    """The pools of every stream this API process runs; ``reconcile`` is one pass (the launcher calls it)."""

    def __init__(
        self,
        settings: ApiSettings,
        streams: StreamStore,
        backends: Backends,
        link: BufferLink | None,
        reports: ReportStore,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.settings = settings
        self.streams = streams
        self.backends = backends
        self.link = link
        self.reports = reports
        self.events = PoolEventStore(streams.db)
        self.leases = LeaseStore(streams.db)
        self.owner = f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self.clock = clock
        self._lease_until: dt.datetime | None = None  # while this process holds the lease (its watch ends sooner)
        self._running: dict[str, dict[str, RunningPool]] = {}  # stream id → pool name → pool
        self._watch: set[str] = set()  # streams with pools seen active (or left over): start them if they end early
        self._finished: set[str] = set()  # streams whose pools ran and ended here
        self._leftovers_done = False
        self._closing = False
        self._lock = threading.RLock()

    # --- the pass ------------------------------------------------------------------------------------------

    def reconcile(self) -> None:
        if not self._hold_lease():
            return
        if not self._leftovers_done:
            self._cancel_leftovers()
            self._leftovers_done = True
        for stream in self.streams.active():
            if stream.spec.get("request", {}).get("worker_pools"):
                self._watch.add(stream.id)
        for stream_id in sorted(self._watch):
            try:
                self._follow(stream_id)
            except Exception:
                log.exception("pools of stream %s", stream_id)

    def _hold_lease(self) -> bool:
        """Claim (or renew) the lease; a new tenure starts with the restart rule. False while another holds it."""
        now = self.clock()
        try:
            claim = self.leases.claim(LEASE, self.owner, self.settings.pool_lease_s, now)
        except Exception:  # the database away: the lease runs out, and the pools with it
            log.exception("pools: cannot claim the lease")
            return self.holds_lease()
        lapsed = self._lease_until is None or now >= self._lease_until
        if claim is None:
            if self._lease_until is not None:
                holder = self.leases.holder(LEASE)
                log.warning("pools: the lease went to %s; leaving the pools to it", holder.owner if holder else "?")
                self._end_tenure()
            return False
        if lapsed or not claim.renewed:
            self._begin_tenure(claim)
        self._lease_until = claim.expires_at - dt.timedelta(seconds=LEASE_MARGIN * self.settings.pool_lease_s)
        return True

    def _begin_tenure(self, claim: Claim) -> None:
        self._end_tenure()  # whatever this process still watched from a lapsed tenure is a leftover now
        self._leftovers_done = False
        log.info("pools: %s holds the lease%s", self.owner,
                 f" (taken over from {claim.previous_owner})" if claim.previous_owner else "")  # fmt: skip

    def _end_tenure(self) -> None:
        self._lease_until = None
        self.halt_without_cancelling()

    def holds_lease(self) -> bool:
        """Whether this process still holds the pools' lease (as of its last renewal)."""
        until = self._lease_until
        return until is not None and self.clock() < until

    def _follow(self, stream_id: str) -> None:
        stream = self.streams.get(stream_id)
        state = StreamState(stream.state)
        with self._lock:
            running = self._running.get(stream_id)
        if running is None:
            if stream_id in self._finished or not self._may_start(stream, state):
                if state.finished and stream_id not in self._finished:
                    self._watch.discard(stream_id)  # ended before it streamed (or long ago): nothing to run
                return
            self._start(stream)
            return
        if state in (StreamState.FAILED, StreamState.CANCELLED):
            self.stop_stream(stream_id, f"stream {state}")
        elif state == StreamState.COMPLETED and self._drain_timed_out(stream):
            self.stop_stream(stream_id, f"the group did not drain within {self.settings.pool_drain_timeout_s:g} s")
        self._retire_if_done(stream_id)

    def _may_start(self, stream: Stream, state: StreamState) -> bool:
        if state == StreamState.STREAMING:
            return True
        return state == StreamState.COMPLETED and not self._drain_timed_out(stream)

    def _drain_timed_out(self, stream: Stream) -> bool:
        ended = stream.finished_at or stream.updated_at
        return self.clock() - ended > dt.timedelta(seconds=self.settings.pool_drain_timeout_s)

    # --- start ---------------------------------------------------------------------------------------------

    def _start(self, stream: Stream) -> None:
        from photonstream.api.schemas import PoolRequest

        requests = [PoolRequest.model_validate(p) for p in stream.spec["request"]["worker_pools"]]
        backend = self.backends.get(stream.job_backend)
        address = stream.data_endpoint["streams"][0]
        endpoint, credentials = self._worker_credential(stream)
        environment = {reporting.STREAM_ID_ENV: stream.id}
        secrets = {CREDENTIALS_ENV: credentials.to_json()} if credentials is not None else {}
        workdir = Path(stream.workdir or self.settings.workdirs / stream.id) / "pools"
        workdir.mkdir(parents=True, exist_ok=True)
        artifacts = self.settings.artifacts(stream.id, stream.workdir)
        kinds = merged_worker_kinds(self.settings.worker_kinds)
        pools: dict[str, RunningPool] = {}
        for index, request in enumerate(requests):
            kind = kinds.get(request.kind)
            try:
                if kind is None:
                    raise ConfigError(f"worker kind {request.kind!r} is no longer in this service's catalog")
                spec = worker_pool(index, request, kind, list(self.settings.run_command), artifacts)
            except (ConfigError, ValueError) as error:
                self._record(stream.id, PoolEvent(utcnow().timestamp(), request.name, "error", 0, None,
                                                  detail=f"cannot run the pool: {error}"))  # fmt: skip
                self._record(stream.id, PoolEvent(utcnow().timestamp(), request.name, STOPPED, 0, None))
                continue
            elastic = ElasticPool(
                spec,
                backend,
                self._lag_reader(address, request.group),
                endpoint=endpoint,
                stream=address,
                workdir=workdir,
                job_prefix=f"s{stream.id[:8]}",
                environment=environment,
                secrets=secrets,
                on_event=lambda event, sid=stream.id: self._record(sid, event),
                reading_max_age_s=self._reading_max_age_s(spec),
            )
            pools[request.name] = RunningPool(elastic)
        with self._lock:
            self._running[stream.id] = pools
        for name, running in pools.items():
            running.thread = threading.Thread(
                target=self._run, args=(running,), name=f"pool-{stream.id[:8]}-{name}", daemon=True
            )
            running.thread.start()
        log.info("stream %s: started %d pool(s)", stream.id, len(pools))

    def _worker_credential(self, stream: Stream) -> tuple[str, Credentials | None]:
        """(the endpoint workers connect to, their credential): a fresh one, granted in the buffer now."""
        settings = self.settings
        if self.link is None or self.link.security == "none":
            return settings.buffer_endpoint, None
        public, secret = (key.decode() for key in zmq.curve_keypair())
        user, password = f"w.{stream.id.replace('-', '')}", new_token_secret()
        self.reports.set_worker_secrets(stream.id, public, user, token_hash(password))
        self.link.register(stream.id)
        address, security = self.link.producer_link()
        if security == "token":
            return address, Credentials.token(user, password)
        assert self.link.server_public_key is not None
        return address, Credentials.curve(self.link.server_public_key, public, secret)

    def _reading_max_age_s(self, spec: WorkerPool) -> float:
        """How old a lag reading can be: the embedded buffer's stats are a snapshot taken once a second."""
        embedded = self.link is not None and self.link.embedded
        return (EMBEDDED_STATS_AGE_S if embedded else 0.0) + spec.interval_s

    def _lag_reader(self, address: str, group: str) -> Callable[[], LagReading | None]:
        link = self.link

        def read() -> LagReading | None:
            if link is None:
                return None
            return reading_from_stats(link.stats(), address, group)

        return read

    def _run(self, running: RunningPool) -> None:
        pool = running.elastic
        while not running.halt.is_set() and not pool.done:
            if not self.holds_lease():  # not renewed in time: another API process may be running the pools now
                log.warning("pool %s: the lease ran out; no longer watching its workers", pool.pool.name)
                return
            try:
                pool.tick()
            except Exception as error:  # one bad decision must not end the watch over the workers
                log.exception("pool %s: tick failed", pool.pool.name)
                pool._emit("error", None, f"tick failed: {error}")
            running.halt.wait(pool.pool.interval_s)

    def _record(self, stream_id: str, event: PoolEvent) -> None:
        action = INTERRUPTED if self._closing and event.action == STOPPED else event.action
        self.events.add(
            stream_id,
            event.pool,
            action,
            at=dt.datetime.fromtimestamp(event.time, dt.UTC),
            workers=event.workers,
            lag=event.lag,
            members=event.members,
            detail=event.detail,
            jobs=event.jobs,
        )

    # --- stop ----------------------------------------------------------------------------------------------

    def stop_stream(self, stream_id: str, reason: str) -> None:
        """Cancel the workers of every pool of the stream now (the stream was cancelled or failed)."""
        with self._lock:
            pools = list(self._running.get(stream_id, {}).values())
        self._stop_pools(pools, reason)
        self._retire_if_done(stream_id)

    @staticmethod
    def _stop_pools(pools: list[RunningPool], reason: str) -> None:
        """Stop pools at once, each cancelling its workers at once (see ``ElasticPool.stop``): stopping N workers
        takes about as long as cancelling one, not N times as long."""
        for running in pools:
            running.halt.set()
        if len(pools) == 1:
            pools[0].elastic.stop(reason)
        elif pools:
            with ThreadPoolExecutor(min(STOP_THREADS, len(pools)), thread_name_prefix="pool-stop") as threads:
                list(threads.map(lambda running: running.elastic.stop(reason), pools))

    def _retire_if_done(self, stream_id: str) -> None:
        with self._lock:
            pools = self._running.get(stream_id)
            if pools is None or not all(running.elastic.done for running in pools.values()):
                return
            del self._running[stream_id]
            self._finished.add(stream_id)
            self._watch.discard(stream_id)
        for running in pools.values():
            running.halt.set()
        self._withdraw_credential(stream_id)

    def _withdraw_credential(self, stream_id: str) -> None:
        self.reports.set_worker_secrets(stream_id, None, None, None)
        if self.link is not None:
            try:
                self.link.register(stream_id)
            except PhotonstreamError as error:  # the next sync withdraws it
                log.warning("stream %s: worker credential withdrawal deferred: %s", stream_id, error)

    def close(self) -> None:
        """The API stops: cancel every worker (recorded as ``interrupted``; a restarted API resumes the pools)."""
        self._closing = True
        with self._lock:
            streams = list(self._running)
            pools = [running for pools in self._running.values() for running in pools.values()]
        self._stop_pools(pools, "the API is stopping")
        for stream_id in streams:
            self._retire_if_done(stream_id)
        with self._lock:
            threads = [r.thread for pools in self._running.values() for r in pools.values() if r.thread is not None]
        for thread in threads:
            thread.join(timeout=10)
        if self._lease_until is not None:
            self._lease_until = None
            try:
                self.leases.release(LEASE, self.owner)
            except Exception:  # it runs out by itself
                log.exception("pools: cannot give the lease up")

    def halt_without_cancelling(self) -> None:
        """Stop watching every pool and leave its workers running: what a killed API process leaves behind."""
        with self._lock:
            pools = [running for pools in self._running.values() for running in pools.values()]
            self._running.clear()
        for running in pools:
            running.halt.set()
            if running.thread is not None:
                running.thread.join(timeout=10)

    # --- after a restart -------------------------------------------------------------------------------------

    def _cancel_leftovers(self) -> None:
        for unfinished in self.events.unfinished():
            try:
                stream = self.streams.get(unfinished.stream_id)
                backend = self.backends.get(stream.job_backend)
            except (LookupError, PhotonstreamError) as error:
                log.warning("pool %s of stream %s: %s", unfinished.pool, unfinished.stream_id, error)
                continue
            cancelled = []
            for job_id in unfinished.jobs:
                try:
                    if not backend.status(job_id).state.finished:
                        backend.cancel(job_id)
                        cancelled.append(job_id)
                except (LookupError, PhotonstreamError) as error:
                    log.warning("leftover worker %s: %s", job_id, error)
            resumes = self._may_start(stream, StreamState(stream.state))
            detail = f"left by an earlier API process: cancelled {len(cancelled)} worker job(s)"
            self._record(stream.id, PoolEvent(utcnow().timestamp(), unfinished.pool, STOPPED, 0, None,
                                              detail=detail + ("; the pool starts again" if resumes else ""),
                                              jobs=tuple(cancelled)))  # fmt: skip
            if resumes:
                self._watch.add(stream.id)

    # --- what the API shows ---------------------------------------------------------------------------------

    def live_workers(self, stream_id: str) -> dict[str, list[str]]:
        """Pool name → backend job ids of its live workers, for the pools this process runs."""
        with self._lock:
            pools = dict(self._running.get(stream_id, {}))
        return {name: running.elastic.job_ids() for name, running in pools.items()}
