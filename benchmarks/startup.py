"""``photonstream bench startup``: how fast a job backend starts and stops a job on this machine.

For each backend (local always; slurm when a controller answers here): submit a job that records its PID and then
sleeps, and time
- submit → RUNNING: until the backend's ``status`` says RUNNING (what the API sees),
- submit → process up: until the job's own process has written its PID file,
- cancel → processes gone: from ``cancel`` until ``status`` is CANCELLED and the job's process has ended.
And the whole path a user sees, request → first frame: ``POST /v1/streams`` (the API in this process, with its
embedded buffer and launcher) until a consumer holding the returned credential has the stream's first frame
(``request_to_first_frame_<backend>_s``). Each is the median of ``runs`` jobs, run one after another.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from photonstream.jobs.base import JobBackend, JobSpec, JobState
from photonstream.jobs.local import LocalBackend
from photonstream.jobs.slurm import SlurmBackend

_POLL_S = 0.005
_PATIENCE_S = 60.0


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.perf_counter() + _PATIENCE_S
    while not condition():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"gave up after {_PATIENCE_S:g} s waiting for {what}")
        time.sleep(_POLL_S)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def _one_job(backend: JobBackend, workdir: Path, index: int) -> tuple[float, float, float]:
    pid_file = workdir / f"pid-{index}"
    script = f"echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; exec sleep 300"
    spec = JobSpec(name=f"startup-{index}", command=["sh", "-c", script], workdir=str(workdir))
    started = time.perf_counter()
    job_id = backend.submit(spec)
    _wait(lambda: backend.status(job_id).state == JobState.RUNNING, "RUNNING")
    running = time.perf_counter() - started
    _wait(pid_file.exists, "the job's PID file")
    process_up = time.perf_counter() - started
    pid = int(pid_file.read_text())

    cancelled = time.perf_counter()
    backend.cancel(job_id)
    _wait(lambda: backend.status(job_id).state == JobState.CANCELLED and not _alive(pid), "the job to be gone")
    gone = time.perf_counter() - cancelled
    return running, process_up, gone


def backend_case(name: str, backend: JobBackend, workdir: Path, runs: int) -> dict[str, Any]:
    _one_job(backend, workdir, -1)  # warm-up: first sbatch, first Python start of the shepherd
    timings = [_one_job(backend, workdir, index) for index in range(runs)]
    running, process_up, gone = (statistics.median(column) * 1000 for column in zip(*timings, strict=True))
    return {
        "case": name,
        "runs": runs,
        "submit_to_running_ms": running,
        "submit_to_process_ms": process_up,
        "cancel_to_gone_ms": gone,
    }


def request_to_first_frame(backend: str, root: Path, runs: int) -> list[float]:
    """Seconds from POST /v1/streams to the first frame at a consumer with the returned credential, per run."""
    import warnings

    from photonstream.api.app import create_app
    from photonstream.api.auth.ca import CertificateAuthority
    from photonstream.api.auth.tokens import issue_token
    from photonstream.api.settings import ApiSettings
    from photonstream.client import subscribe_stream
    from photonstream.frames import Frame

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    ca = CertificateAuthority.init(root / "ca", common_name="bench CA")
    token = issue_token(ca, "bench", issuer="photonstream", audience="photonstream-api", lifetime_s=3600,
                        experiments=("bench001",))  # fmt: skip
    settings = ApiSettings(state_dir=root / "api", ca_dir=ca.directory, client_certificates="off",
                           job_backend=backend, job_backends=[backend], buffer_bind="tcp://127.0.0.1:*",
                           buffer_token_bind=None, launcher_interval_s=0.05)  # fmt: skip
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "events": 20}
    body = {"experiment": "bench001", "runs": [1], "pipeline": {"source": source}, "resources": {"time_limit_s": 600}}
    seconds = []
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {token}"}) as api:
        for _ in range(runs + 1):  # the first is a warm-up (imports, caches)
            began = time.perf_counter()
            response = api.post("/v1/streams", json=body)
            response.raise_for_status()
            with subscribe_stream(response.json(), timeout_s=_PATIENCE_S) as consumer:
                first = next(m for m in consumer if isinstance(m, Frame))
            seconds.append(time.perf_counter() - began)
            assert first.event == 0
    return seconds[1:]


def main(runs: int = 5, json_only: bool = False) -> dict[str, Any]:
    rows = []
    summary: dict[str, Any] = {}
    first_frame: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as tmp:
        root = Path(tmp)
        local = LocalBackend(state_dir=root / "state", cancel_grace_s=5.0)
        rows.append(backend_case("local", local, root / "local", runs))
        local.close()
        first_frame["local"] = request_to_first_frame("local", root / "request-local", runs)
        slurm = SlurmBackend(state_dir=root / "state")
        available, why_not = slurm.available()
        if available:
            # Slurm jobs may run where only shared filesystems are visible: /tmp is fine on this one-node cluster
            rows.append(backend_case("slurm", slurm, root / "slurm", runs))
            first_frame["slurm"] = request_to_first_frame("slurm", root / "request-slurm", runs)
        else:
            summary["slurm_skipped"] = why_not
    for row in rows:
        row["request_to_first_frame_ms"] = statistics.median(first_frame[row["case"]]) * 1000
        for key in ("submit_to_running_ms", "submit_to_process_ms", "cancel_to_gone_ms"):
            summary[f"{row['case']}_{key}"] = round(row[key], 1)
        summary[f"request_to_first_frame_{row['case']}_s"] = round(row["request_to_first_frame_ms"] / 1000, 3)
    summary["runs"] = runs
    summary["machine"] = machine()
    report("photonstream bench startup", rows, summary, json_only)
    return summary


if __name__ == "__main__":
    main()
