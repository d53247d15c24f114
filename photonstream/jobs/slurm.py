"""The Slurm job backend: real Slurm through its command-line tools (sbatch, squeue, sacct, scancel).

``submit`` writes a batch script (``#SBATCH`` lines from the job's Resources; ``srun`` when it asks for several ranks;
``OMP_NUM_THREADS`` and kin from ``SLURM_CPUS_PER_TASK`` unless the job sets them) and hands it to ``sbatch --parsable``
on stdin. Slurm keeps that script (``scontrol write batch_script``), so the job's secrets are not in it: they go to a
0600 file in the workdir (``photonstream.job_secrets``), which must therefore be on a filesystem the nodes share with
this host, and the script names only the file; it is deleted once the job ended. ``status`` asks ``squeue`` while the
job is active and ``sacct`` once it has ended (exit code, reason; sacct remembers jobs squeue has forgotten), falling
back to ``squeue`` + ``scontrol`` where no slurmdbd runs. ``cancel`` is ``scancel``: Slurm sends SIGTERM and,
``KillWait`` seconds later, SIGKILL; it returns once Slurm reports the job ended (or after ``cancel_wait_s``). ``logs``
reads the job's output file, so the API must see the filesystem the job writes to (as login nodes do).

``submit_array(specs, name)`` starts several jobs as ONE array job (``sbatch --array=0-N``; elastic worker pools
start each batch of new workers so): task ``i`` runs ``specs[i]`` (its own command, environment and log, chosen by
``$SLURM_ARRAY_TASK_ID``), and the ids returned are the task ids ``JOBID_i``, which ``status`` (squeue/sacct
``-j JOBID_i``), ``cancel`` (``scancel JOBID_i``: that task alone) and ``logs`` take like job ids. The tasks share
one secrets file, deleted once every task of the array ended.

``batch_script`` and ``job_status_from_slurm`` are shared with the SF API backend, which submits the same scripts.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from photonstream.errors import ConfigError
from photonstream.job_secrets import SECRETS_FILE_ENV, remove_secrets_file
from photonstream.jobs.base import JobSpec, JobState, JobStatus
from photonstream.jobs.common import (
    REASON_TAIL_BYTES,
    REASON_TAIL_LINES,
    JobBackendError,
    JobNotFoundError,
    JobRecords,
    default_state_dir,
    failure_reason,
    log_path_of,
    place_secrets,
    read_tail,
    thread_limits,
)

_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
_RUNNING = {"RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "SUSPENDED"}
_FAILED = {
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "TIMEOUT",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
    "SPECIAL_EXIT",
    "REVOKED",
}
_SCHEDULER_NAME = re.compile(r"^[A-Za-z0-9_.,:+-]+$")
_ENVIRONMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# how long a job sbatch accepted may stay invisible to sacct and squeue before it counts as lost
_VISIBILITY_GRACE_S = 60.0


# --- batch scripts -------------------------------------------------------------------------------------------------


def slurm_time(seconds: int) -> str:
    """Slurm's ``days-hours:minutes:seconds`` time format."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{days}-{hours:02d}:{minutes:02d}:{seconds:02d}"


def array_log_path(log_path: str) -> str:
    """The output pattern of an array job: ``run.log`` → ``run-%a.log`` (``%a``: the task index)."""
    path = Path(log_path)
    return str(path.with_name(f"{path.stem}-%a{path.suffix}"))


def _path_option(what: str, value: str, spec: JobSpec) -> str:
    if any(character.isspace() for character in value):
        raise ConfigError(f"job {spec.name}: the {what} {value!r} holds whitespace, which #SBATCH lines cannot carry")
    return value


def batch_script(spec: JobSpec, log_path: str | None = None) -> str:
    """The ``sbatch`` script that runs ``spec``; ``log_path`` (default: ``log_path_of(spec)``) gets stdout+stderr.

    It never holds ``spec.secrets`` (Slurm keeps the script): the backend writes them to a file first
    (``common.place_secrets``) and the script names only that file."""
    _refuse_secrets(spec)
    # '%' starts a Slurm filename pattern (%j, %a): a literal one is written '%%'
    output = _path_option("log path", log_path or log_path_of(spec), spec).replace("%", "%%")
    if spec.resources.array is not None:
        output = array_log_path(output)
    return "\n".join([*_script_head(spec, output), *_run_lines(spec)]) + "\n"


def array_batch_script(name: str, specs: Sequence[JobSpec], log_paths: Sequence[str]) -> str:
    """One ``sbatch`` script that runs ``specs`` as the tasks ``0..n-1`` of one array job named ``name``.

    The specs may differ in command, environment and log path (task ``i`` writes to ``log_paths[i]``, truncated
    like a single job's ``--output``); they share resources and workdir, which the array asks for once per task.
    What Slurm itself writes before a task's shell redirects goes to ``<workdir>/<name>-%a.log``."""
    if not specs or len(specs) != len(log_paths):
        raise ConfigError(f"array job {name}: needs one log path per spec and at least one spec")
    first = specs[0]
    for spec in specs:
        _refuse_secrets(spec)
        if spec.resources != first.resources or spec.workdir != first.workdir:
            raise ConfigError(f"array job {name}: job {spec.name} differs from {first.name} in resources or workdir")
        if spec.resources.array is not None:
            raise ConfigError(f"array job {name}: job {spec.name} is itself an array (resources.array)")
    head_spec = first.model_copy(
        update={"name": name, "resources": first.resources.model_copy(update={"array": len(specs)})}
    )
    own_log = str(Path(first.workdir) / f"{name}.log")
    output = array_log_path(_path_option("log path", own_log, head_spec).replace("%", "%%"))
    lines = [*_script_head(head_spec, output), 'case "$SLURM_ARRAY_TASK_ID" in']
    for task, (spec, log_path) in enumerate(zip(specs, log_paths, strict=True)):
        lines.append(f"{task})")
        lines.append(f"    exec >{shlex.quote(log_path)} 2>&1")
        lines.extend(f"    {line}" for line in _run_lines(spec))
        lines.append("    ;;")
    lines += ["*)", '    echo "no task $SLURM_ARRAY_TASK_ID in this array" >&2', "    exit 2", "    ;;", "esac"]
    return "\n".join(lines) + "\n"


def _refuse_secrets(spec: JobSpec) -> None:
    if spec.secrets:
        raise ConfigError(f"job {spec.name}: its secrets must go to a secrets file, never into the batch script")


def _script_head(spec: JobSpec, output: str) -> list[str]:
    """The shebang and the ``#SBATCH`` lines (``output`` already a Slurm filename pattern)."""
    resources = spec.resources
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={spec.name}",
        f"#SBATCH --nodes={resources.nodes}",
        f"#SBATCH --ntasks={resources.ranks}",
        f"#SBATCH --cpus-per-task={resources.cores_per_rank}",
        f"#SBATCH --time={slurm_time(resources.time_limit_s)}",
    ]
    if resources.memory_mb is not None:
        lines.append(f"#SBATCH --mem={resources.memory_mb}M")
    for option in ("partition", "qos", "account"):
        value = getattr(resources, option)
        if value is None:
            continue
        if not _SCHEDULER_NAME.match(value):
            raise ConfigError(f"job {spec.name}: resources.{option} {value!r} is not a valid Slurm name")
        lines.append(f"#SBATCH --{option}={value}")
    if resources.array is not None:
        lines.append(f"#SBATCH --array=0-{resources.array - 1}")
    lines.append(f"#SBATCH --output={output}")
    lines.append(f"#SBATCH --chdir={_path_option('workdir', spec.workdir, spec)}")
    return lines


def _run_lines(spec: JobSpec) -> list[str]:
    """The environment and the ``exec`` of the command (under ``srun`` for several ranks)."""
    resources = spec.resources
    lines = []
    for name, value in spec.environment.items():
        if not _ENVIRONMENT_NAME.match(name):
            raise ConfigError(f"job {spec.name}: environment variable name {name!r} is not valid")
        lines.append(f"export {name}={shlex.quote(value)}")
    for name, cores in thread_limits(spec).items():  # one thread per core the rank has, not per core of the node
        lines.append(f"export {name}=${{SLURM_CPUS_PER_TASK:-{cores}}}")
    command = shlex.join(spec.command)
    if resources.ranks > 1:
        srun = f"srun --ntasks={resources.ranks} --cpus-per-task={resources.cores_per_rank}"
        lines.append(f"exec {srun} {command}")
    else:
        lines.append(f"exec {command}")
    return lines


# --- states --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlurmJobRow:
    """One job (or array task) as sacct or squeue reports it."""

    job_id: str
    state: str  # e.g. RUNNING, "CANCELLED by 0", COMPLETED
    exit_code: str = ""  # "exit:signal", e.g. "3:0"; empty when unknown (squeue)
    reason: str = ""


def job_state_of(slurm_state: str) -> JobState:
    """Our state for a Slurm state (``CANCELLED by 1000`` and ``RUNNING+`` suffixes allowed)."""
    base = slurm_state.split()[0].rstrip("+") if slurm_state.strip() else ""
    if base in _PENDING:
        return JobState.PENDING
    if base == "COMPLETED":
        return JobState.COMPLETED
    if base == "CANCELLED":
        return JobState.CANCELLED
    if base in _FAILED:
        return JobState.FAILED
    # RUNNING and its relatives, and states newer Slurm versions add: Slurm will report an end state later
    return JobState.RUNNING


def exit_code_of(slurm_exit_code: str) -> int | None:
    """``"3:0"`` → 3; ``"0:9"`` (killed by signal 9) → -9, like ``subprocess``; unknown → None."""
    try:
        code, _, signal = slurm_exit_code.partition(":")
        code_value, signal_value = int(code), int(signal or 0)
    except ValueError:
        return None
    return -signal_value if signal_value else code_value


def job_status_from_slurm(job_id: str, rows: list[SlurmJobRow], log_tail: str = "") -> JobStatus:
    """One JobStatus for a job from its rows (several for a job array: the least advanced task decides)."""
    if not rows:
        raise ValueError("no rows")
    states = [job_state_of(row.state) for row in rows]
    for wanted in (JobState.RUNNING, JobState.PENDING, JobState.FAILED, JobState.CANCELLED, JobState.COMPLETED):
        if wanted in states:
            row = rows[states.index(wanted)]
            break
    state = job_state_of(row.state)
    exit_code = exit_code_of(row.exit_code) if row.exit_code else None
    slurm_reason = row.reason if row.reason not in ("", "None", "(null)") else ""
    if state == JobState.FAILED:
        summary = row.state.split()[0]
        if exit_code is not None and exit_code < 0:
            summary += f" (signal {-exit_code})"
        elif exit_code:
            summary += f" (exit code {exit_code})"
        if slurm_reason:
            summary += f", {slurm_reason}"
        if len(rows) > 1:
            summary = f"task {row.job_id}: {summary}"
        reason = failure_reason(summary, log_tail)
    elif state == JobState.CANCELLED:
        reason = row.state
    else:
        reason = slurm_reason
    return JobStatus(job_id=job_id, state=state, exit_code=exit_code, reason=reason)


def parse_rows(text: str, fields: int) -> list[SlurmJobRow]:
    """``|``-separated lines (``sacct -P``, ``squeue -o %i|%T|%r``) → rows; job steps (``123.batch``) dropped."""
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < fields or "." in parts[0]:
            continue
        if fields == 4:
            rows.append(SlurmJobRow(job_id=parts[0], state=parts[1], exit_code=parts[2], reason=parts[3]))
        else:
            rows.append(SlurmJobRow(job_id=parts[0], state=parts[1], reason=parts[2]))
    return rows


# --- the backend ---------------------------------------------------------------------------------------------------


class SlurmBackend:
    """Submit, watch and cancel jobs through the Slurm CLI on this host.

    >>> backend = SlurmBackend()  # sbatch, squeue, sacct, scancel on PATH
    """

    name = "slurm"

    def __init__(
        self,
        state_dir: str | Path | None = None,
        command_timeout_s: float = 30.0,
        sbatch: str = "sbatch",
        squeue: str = "squeue",
        sacct: str = "sacct",
        scancel: str = "scancel",
        scontrol: str = "scontrol",
        cancel_wait_s: float = 10.0,
    ) -> None:
        self.records = JobRecords(Path(state_dir or default_state_dir()) / "slurm")
        self.command_timeout_s = command_timeout_s
        self.cancel_wait_s = cancel_wait_s
        self._tools = {"sbatch": sbatch, "squeue": squeue, "sacct": sacct, "scancel": scancel, "scontrol": scontrol}

    def submit(self, spec: JobSpec) -> str:
        log_path = log_path_of(spec)
        batch_script(spec.model_copy(update={"secrets": {}}), log_path)  # a bad spec fails before anything is written
        try:
            Path(spec.workdir).mkdir(parents=True, exist_ok=True)
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"job {spec.name}: cannot create {error.filename}: {error.strerror}") from error
        spec, secrets_file = place_secrets(spec)  # the workdir is shared with the nodes, as the log is
        try:
            job_id = self._sbatch(spec.name, batch_script(spec, log_path))
        except BaseException:
            remove_secrets_file(secrets_file)
            raise
        record = {"name": spec.name, "log_path": log_path, "array": spec.resources.array, "submitted": time.time()}
        self.records.save(job_id, {**record, "secrets_file": secrets_file})
        return job_id

    def submit_array(self, specs: Sequence[JobSpec], name: str) -> list[str]:
        """Start ``specs`` as the tasks of one array job ``name`` (one ``sbatch --array=0-N``); returns the task ids
        ``JOBID_0`` .. ``JOBID_N``, which ``status``, ``cancel`` (``scancel JOBID_TASK``) and ``logs`` take.

        The specs share resources, workdir and secrets (one secrets file for the array, deleted once every task
        ended); each task writes to its own spec's log."""
        specs = list(specs)
        if not specs:
            raise ConfigError(f"array job {name}: no jobs to start")
        if any(spec.secrets != specs[0].secrets for spec in specs):
            raise ConfigError(f"array job {name}: its jobs must share their secrets (one secrets file)")
        log_paths = [log_path_of(spec) for spec in specs]
        plain = [spec.model_copy(update={"secrets": {}}) for spec in specs]
        array_batch_script(name, plain, log_paths)  # a bad spec fails before anything is written
        try:
            for path in {specs[0].workdir, *(str(Path(log).parent) for log in log_paths)}:
                Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ConfigError(f"array job {name}: cannot create {error.filename}: {error.strerror}") from error
        first, secrets_file = place_secrets(specs[0])  # the workdir is shared with the nodes, as the logs are
        if secrets_file is not None:
            named = {SECRETS_FILE_ENV: first.environment[SECRETS_FILE_ENV]}
            plain = [spec.model_copy(update={"environment": {**spec.environment, **named}}) for spec in plain]
        try:
            job_id = self._sbatch(name, array_batch_script(name, plain, log_paths))
        except BaseException:
            remove_secrets_file(secrets_file)
            raise
        now = time.time()
        task_ids = [f"{job_id}_{task}" for task in range(len(specs))]
        self.records.save(
            job_id,
            {"name": name, "task_logs": log_paths, "submitted": now, "secrets_file": secrets_file},
        )
        for task_id, spec, log_path in zip(task_ids, specs, log_paths, strict=True):
            self.records.save(task_id, {"name": spec.name, "log_path": log_path, "array_job": job_id, "submitted": now})
        return task_ids

    def status(self, job_id: str) -> JobStatus:
        rows = self._current_rows(job_id)
        if not rows:
            record = self.records.load(job_id)
            if record is not None and time.time() - record["submitted"] < _VISIBILITY_GRACE_S:
                return JobStatus(job_id=job_id, state=JobState.PENDING, reason="submitted; not yet listed by Slurm")
            if record is None:
                raise JobNotFoundError(f"slurm backend: Slurm knows no job {job_id}")
            return JobStatus(job_id=job_id, state=JobState.LOST, reason=f"Slurm no longer knows job {job_id}")
        status = job_status_from_slurm(job_id, rows)
        if status.state.finished:
            self.discard_secrets(job_id)  # nothing reads them any more
        if status.state == JobState.FAILED:
            tail = self.logs(job_id, REASON_TAIL_LINES, REASON_TAIL_BYTES)
            status = job_status_from_slurm(job_id, rows, tail)
        return status

    def discard_secrets(self, job_id: str) -> None:
        """Delete the job's secrets file; a task of an array shares its array's, deleted once every task ended."""
        record = self.records.load(job_id)
        if record is None:
            return
        array_job = record.get("array_job")
        if array_job is None:
            remove_secrets_file(record.get("secrets_file"))
            return
        array_record = self.records.load(array_job)
        if array_record is None or not array_record.get("secrets_file"):
            return
        rows = self._current_rows(array_job)
        if rows and all(job_state_of(row.state).finished for row in rows):
            remove_secrets_file(array_record["secrets_file"])

    def cancel(self, job_id: str) -> None:
        """``scancel`` (Slurm sends SIGTERM, then SIGKILL after its ``KillWait``), then wait until Slurm reports the
        job ended -- its processes gone, as after the local backend's cancel -- for at most ``cancel_wait_s``.

        The API ends the stream in the buffer when this returns: a job still running then would find its stream
        ended under it and log that as an error instead of its own cancelled summary.
        """
        result = self._run("scancel", job_id)
        if result.returncode != 0 and not self.status(job_id).state.finished:
            raise JobBackendError(f"scancel {job_id} failed: {_last_line(result.stderr)}")
        deadline = time.monotonic() + self.cancel_wait_s
        while not self.status(job_id).state.finished and time.monotonic() < deadline:
            time.sleep(0.1)

    def logs(self, job_id: str, tail_lines: int | None = None, max_bytes: int = 1_000_000) -> str:
        record = self.records.load(job_id)
        if record is None:
            log_path = self._scontrol_field(job_id, "StdOut")
            if log_path is None:
                raise JobNotFoundError(f"slurm backend: no record of job {job_id} and Slurm does not know it")
            return read_tail(log_path, tail_lines, max_bytes)
        if record.get("task_logs"):  # an array started by submit_array: each task wrote its own log
            parts = []
            for task, log_path in enumerate(record["task_logs"]):
                text = read_tail(log_path, tail_lines, max_bytes)
                if text:
                    parts.append(f"==> task {task} <==\n{text}")
            return "".join(parts)[-max_bytes:]
        if not record.get("array"):
            return read_tail(record["log_path"], tail_lines, max_bytes)
        pattern = array_log_path(record["log_path"])
        parts = []
        for task in range(record["array"]):
            text = read_tail(pattern.replace("%a", str(task)), tail_lines, max_bytes)
            if text:
                parts.append(f"==> task {task} <==\n{text}")
        return "".join(parts)[-max_bytes:]

    def available(self) -> tuple[bool, str]:
        """Whether a Slurm controller answers here, and if not, why (for tests and health checks)."""
        try:
            result = self._run("scontrol", "ping")
        except JobBackendError as error:
            return False, str(error)
        if result.returncode != 0 or "UP" not in result.stdout:
            return False, f"scontrol ping: {_last_line(result.stdout + result.stderr)}"
        return True, ""

    # --- internals -----------------------------------------------------------------------------------------------

    def _run(self, tool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [self._tools[tool], *args]
        try:
            return subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=self.command_timeout_s, check=False
            )
        except FileNotFoundError as error:
            raise JobBackendError(
                f"slurm backend: {argv[0]!r} not found (install the Slurm client, e.g. apt-get install slurm-client)"
            ) from error
        except subprocess.TimeoutExpired as error:
            raise JobBackendError(f"slurm backend: {tool} did not answer in {self.command_timeout_s:g} s") from error

    def _sbatch(self, name: str, script: str) -> str:
        result = self._run("sbatch", "--parsable", stdin=script)
        if result.returncode != 0:
            raise JobBackendError(f"sbatch refused job {name}: {_last_line(result.stderr)}")
        job_id = result.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise JobBackendError(f"sbatch answered {result.stdout.strip()!r}, not a job id")
        return job_id

    def _current_rows(self, job_id: str) -> list[SlurmJobRow]:
        """The freshest view: squeue (slurmctld itself) while the job is active; sacct (the accounting database,
        which lags slurmctld by a moment and would show a running job as pending) once it has ended; squeue plus
        scontrol's exit code where there is no database or it has not caught up."""
        queue_rows = self._squeue_rows(job_id)
        if any(not job_state_of(row.state).finished for row in queue_rows):
            return queue_rows
        accounting_rows = self._sacct_rows(job_id)
        if accounting_rows and not (queue_rows and any(not job_state_of(r.state).finished for r in accounting_rows)):
            return accounting_rows
        if len(queue_rows) == 1:
            exit_code = self._scontrol_field(job_id, "ExitCode") or ""
            row = queue_rows[0]
            return [SlurmJobRow(row.job_id, row.state, exit_code, row.reason)]
        return queue_rows

    def _sacct_rows(self, job_id: str) -> list[SlurmJobRow]:
        result = self._run("sacct", "-P", "-n", "-X", "-j", job_id, "--format=JobID,State,ExitCode,Reason")
        return parse_rows(result.stdout, 4) if result.returncode == 0 else []

    def _squeue_rows(self, job_id: str) -> list[SlurmJobRow]:
        result = self._run("squeue", "-h", "-j", job_id, "--states=all", "-o", "%i|%T|%r")
        return parse_rows(result.stdout, 3) if result.returncode == 0 else []

    def _scontrol_field(self, job_id: str, field: str) -> str | None:
        result = self._run("scontrol", "show", "job", "-o", job_id)
        if result.returncode != 0:
            return None
        for word in result.stdout.split():
            key, _, value = word.partition("=")
            if key == field:
                return value
        return None


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"
