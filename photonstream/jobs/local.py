"""The local job backend, photonstream's embedded default: jobs are processes on this machine.

Each job runs under a shepherd (``_shepherd.py``) in a new session, so the job is one process group: cancel sends
SIGTERM to the group and SIGKILL after a grace period; the shepherd enforces the time limit and records the exit
code. At most ``max_concurrent`` jobs run at once; later ones wait as PENDING and start, oldest first, when a slot
frees. ``resources.ranks > 1`` runs the command under ``mpirun -n RANKS`` (mpich from pip installs it next to the
Python interpreter). ``cores_per_rank`` becomes ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS`` and
``MKL_NUM_THREADS`` where the job's environment does not set them (ranks do not each start a thread per core).
Other resources are a scheduler's business and are ignored here. The job's secrets go to a 0600 file in its
workdir (``photonstream.job_secrets``), deleted when the job ends or ``discard_secrets`` is called.

Jobs are kept in a SQLite file in the state directory, so a new backend object (after an API restart) re-adopts
jobs that still run, recognised by PID *and* process start time, and marks a job whose process vanished without
an exit record LOST -- never leaves it RUNNING.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from photonstream.config.environment import JOB_ID_ENV
from photonstream.errors import ConfigError, MissingDependencyError
from photonstream.job_secrets import SECRETS_FILE_ENV, remove_secrets_file
from photonstream.jobs import _shepherd
from photonstream.jobs.base import JobSpec, JobState, JobStatus
from photonstream.jobs.common import (
    REASON_TAIL_BYTES,
    REASON_TAIL_LINES,
    JobNotFoundError,
    default_state_dir,
    failure_reason,
    log_path_of,
    place_secrets,
    read_tail,
    thread_limits,
)

SHEPHERD = Path(_shepherd.__file__).resolve()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    argv TEXT NOT NULL,
    log_path TEXT NOT NULL,
    state TEXT NOT NULL,
    pid INTEGER,
    start_ticks INTEGER,
    boot_id TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    reason TEXT NOT NULL DEFAULT '',
    submitted_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL
)
"""


def find_mpirun() -> str | None:
    """``mpirun`` next to this Python (pip's mpich puts it there), else the first one on PATH."""
    beside_python = Path(sys.prefix) / "bin" / "mpirun"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which("mpirun")


class LocalBackend:
    """Run jobs as local process groups; see the module docstring.

    >>> backend = LocalBackend(state_dir="/tmp/ps-jobs", max_concurrent=2)
    >>> job_id = backend.submit(JobSpec(name="demo", command=["echo", "hi"], workdir="/tmp"))
    """

    name = "local"

    def __init__(
        self,
        state_dir: str | Path | None = None,
        max_concurrent: int | None = None,
        cancel_grace_s: float = 5.0,
        poll_interval_s: float = 0.2,
        mpirun: str | None = None,
    ) -> None:
        if max_concurrent is not None and max_concurrent < 1:
            raise ConfigError(f"local backend: max_concurrent must be at least 1, not {max_concurrent}")
        if cancel_grace_s < 0:
            raise ConfigError(f"local backend: cancel_grace_s must not be negative, not {cancel_grace_s}")
        self.state_dir = Path(state_dir) if state_dir is not None else default_state_dir()
        self.max_concurrent = max_concurrent or os.cpu_count() or 1
        self.cancel_grace_s = cancel_grace_s
        self.poll_interval_s = poll_interval_s
        self.mpirun = mpirun
        try:
            (self.state_dir / "local").mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"local backend: cannot create state directory {self.state_dir}: {error}") from error
        self._database = self.state_dir / "local-jobs.sqlite3"
        self._boot_id = _shepherd.boot_id()
        self._lock = threading.RLock()
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._monitor: threading.Thread | None = None
        self._closed = threading.Event()
        with self._transaction() as db:
            db.execute(_SCHEMA)
        self._reconcile()

    # --- the JobBackend protocol -------------------------------------------------------------------------------

    def submit(self, spec: JobSpec) -> str:
        argv = self._argv(spec)
        try:
            Path(spec.workdir).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"job {spec.name}: cannot create workdir {spec.workdir}: {error.strerror}") from error
        spec, _ = place_secrets(spec)  # the stored spec names the secrets file, it holds no secret
        job_id = uuid.uuid4().hex[:16]
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, name, spec, argv, log_path, state, submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    spec.name,
                    spec.model_dump_json(),
                    json.dumps(argv),
                    log_path_of(spec),
                    JobState.PENDING.value,
                    time.time(),
                ),
            )
        self._reconcile()
        self._ensure_monitor()
        return job_id

    def status(self, job_id: str) -> JobStatus:
        self._reconcile()
        row = self._row(job_id)
        reason = row["reason"]
        if row["state"] == JobState.PENDING and not reason:
            reason = f"waiting for a free slot ({self.max_concurrent} jobs may run at once)"
        return JobStatus(job_id=job_id, state=JobState(row["state"]), exit_code=row["exit_code"], reason=reason)

    def cancel(self, job_id: str) -> None:
        """Stop the job: a pending one never starts; a running one gets SIGTERM, then SIGKILL after the grace.

        Returns once no process of the job is left (or, if one survives even SIGKILL, after a few seconds more).
        """
        self._reconcile()
        with self._lock, self._transaction() as db:
            row = self._row(job_id, db)
            if row["state"] == JobState.PENDING:
                db.execute(
                    "UPDATE jobs SET state = ?, reason = ?, finished_at = ? WHERE id = ?",
                    (JobState.CANCELLED.value, "cancelled before it started", time.time(), job_id),
                )
                self._remove_secrets(row)
                return
            if row["state"] != JobState.RUNNING:
                return
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
        self._stop_group(row)
        self._reconcile()

    def logs(self, job_id: str, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str:
        return read_tail(self._row(job_id)["log_path"], tail_lines, max_bytes)

    def discard_secrets(self, job_id: str) -> None:
        self._remove_secrets(self._row(job_id))

    # --- more than the protocol ----------------------------------------------------------------------------------

    def process_group(self, job_id: str) -> int | None:
        """The job's process group id while it runs (its shepherd's PID), else None."""
        row = self._row(job_id)
        return row["pid"] if row["state"] == JobState.RUNNING else None

    def close(self) -> None:
        """Stop watching (jobs keep running; a new backend on the same state directory re-adopts them)."""
        self._closed.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    # --- internals -----------------------------------------------------------------------------------------------

    def _argv(self, spec: JobSpec) -> list[str]:
        command = list(spec.command)
        if spec.resources.ranks > 1:
            mpirun = self.mpirun or find_mpirun()
            if mpirun is None:
                feature = f"job {spec.name}: running {spec.resources.ranks} ranks"
                raise MissingDependencyError.for_package("mpich", feature)
            command = [mpirun, "-n", str(spec.resources.ranks), *command]
        return command

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # one connection per transaction: safe across threads and across processes sharing the state directory
        db = sqlite3.connect(self._database, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        finally:
            db.close()

    def _row(self, job_id: str, db: sqlite3.Connection | None = None) -> sqlite3.Row:
        if db is None:
            with self._transaction() as own:
                return self._row(job_id, own)
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFoundError(f"local backend: no job {job_id!r} in {self.state_dir}")
        return row

    def _exit_file(self, job_id: str) -> Path:
        return self.state_dir / "local" / f"{job_id}.exit.json"

    @staticmethod
    def _remove_secrets(row: sqlite3.Row) -> None:
        remove_secrets_file(json.loads(row["spec"]).get("environment", {}).get(SECRETS_FILE_ENV))

    def _is_alive(self, row: sqlite3.Row) -> bool:
        return row["boot_id"] == self._boot_id and _shepherd.is_same_live_process(row["pid"], row["start_ticks"])

    def _reconcile(self) -> None:
        """Record the end of jobs whose shepherd is gone, then start pending jobs while slots are free."""
        with self._lock, self._transaction() as db:
            for job_id, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[job_id]
            running = db.execute("SELECT * FROM jobs WHERE state = ?", (JobState.RUNNING.value,)).fetchall()
            still_running = 0
            for row in running:
                if self._is_alive(row):
                    still_running += 1
                else:
                    self._record_end(db, row)
            free = self.max_concurrent - still_running
            if free <= 0:
                return
            pending = db.execute(
                "SELECT * FROM jobs WHERE state = ? ORDER BY seq LIMIT ?", (JobState.PENDING.value, free)
            ).fetchall()
            for row in pending:
                self._launch(db, row)

    def _record_end(self, db: sqlite3.Connection, row: sqlite3.Row) -> None:
        exit_file = self._exit_file(row["id"])
        try:
            record = json.loads(exit_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            record = None
        exit_code = record["exit_code"] if record else None
        if row["cancel_requested"]:
            state, reason = JobState.CANCELLED, "cancelled"
        elif record is None:
            state = JobState.LOST
            summary = f"its process (pid {row['pid']}) ended without recording an exit status"
            reason = failure_reason(summary, read_tail(row["log_path"], REASON_TAIL_LINES, REASON_TAIL_BYTES))
        elif exit_code == 0:
            state, reason = JobState.COMPLETED, ""
        else:
            state = JobState.FAILED
            reason = failure_reason(record["reason"], read_tail(row["log_path"], REASON_TAIL_LINES, REASON_TAIL_BYTES))
        finished_at = record["finished_at"] if record else time.time()
        db.execute(
            "UPDATE jobs SET state = ?, exit_code = ?, reason = ?, finished_at = ? WHERE id = ?",
            (state.value, exit_code, reason, finished_at, row["id"]),
        )
        exit_file.unlink(missing_ok=True)
        self._remove_secrets(row)  # the job is over: nothing reads its secrets any more

    def _launch(self, db: sqlite3.Connection, row: sqlite3.Row) -> None:
        job_id = row["id"]
        spec = JobSpec.model_validate_json(row["spec"])
        exit_file = self._exit_file(job_id)
        log_path = Path(row["log_path"])
        try:
            Path(spec.workdir).mkdir(parents=True, exist_ok=True)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_bytes(b"")
            exit_file.unlink(missing_ok=True)
            argv = [
                sys.executable,
                "-I",  # isolated: the job's PYTHON* variables are the job's, not the shepherd's
                "-S",  # no site packages: the shepherd needs only the standard library, and starts faster
                str(SHEPHERD),
                "--log",
                str(log_path),
                "--exit-file",
                str(exit_file),
                "--time-limit",
                str(spec.resources.time_limit_s),
                "--grace",
                str(self.cancel_grace_s),
                "--",
                *json.loads(row["argv"]),
            ]
            environment = {**os.environ, **thread_limits(spec), **spec.environment, JOB_ID_ENV: job_id}
            with open(log_path, "ab") as shepherd_errors:
                child = subprocess.Popen(
                    argv,
                    cwd=spec.workdir,
                    env=environment,
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=shepherd_errors,
                )
        except OSError as error:
            db.execute(
                "UPDATE jobs SET state = ?, reason = ?, finished_at = ? WHERE id = ?",
                (JobState.FAILED.value, f"could not start: {error}", time.time(), job_id),
            )
            return
        self._children[job_id] = child
        info = _shepherd.process_info(child.pid)
        db.execute(
            "UPDATE jobs SET state = ?, pid = ?, start_ticks = ?, boot_id = ?, started_at = ? WHERE id = ?",
            (
                JobState.RUNNING.value,
                child.pid,
                info.start_ticks if info else -1,
                self._boot_id,
                time.time(),
                job_id,
            ),
        )

    def _stop_group(self, row: sqlite3.Row) -> None:
        """SIGTERM to the job's group, SIGKILL to what is left after the grace period; wait until none is left."""
        group, started = row["pid"], row["start_ticks"]
        if row["boot_id"] != self._boot_id:
            return

        def members() -> list[int]:
            child = self._children.get(row["id"])
            if child is not None:
                child.poll()  # reap our own shepherd, or it stays a zombie
            # processes started before the job cannot be its own: guards against a reused group id
            return _shepherd.group_members(group, started_at_or_after=started)

        for signum, wait_s in ((signal.SIGTERM, self.cancel_grace_s), (signal.SIGKILL, 5.0)):
            if not members():
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
            deadline = time.monotonic() + wait_s
            while members() and time.monotonic() < deadline:
                time.sleep(0.02)

    def _ensure_monitor(self) -> None:
        """A thread that starts queued jobs as slots free, and reaps finished shepherds, while there are any."""
        with self._lock:
            if self._monitor is not None and self._monitor.is_alive():
                return
            self._monitor = threading.Thread(target=self._watch, name="photonstream-local-jobs", daemon=True)
            self._monitor.start()

    def _watch(self) -> None:
        while not self._closed.wait(self.poll_interval_s):
            self._reconcile()
            with self._lock, self._transaction() as db:
                query = "SELECT COUNT(*) FROM jobs WHERE state = ?"
                (pending,) = db.execute(query, (JobState.PENDING.value,)).fetchone()
                if pending == 0 and not self._children:
                    self._monitor = None
                    return
