"""The same stream request through the whole service on each job backend: ``local`` and a real Slurm.

One request body (the service's default backend is the only difference) goes through ``POST /v1/streams`` of the
API under uvicorn, with its launcher and embedded CURVE buffer; a consumer reads it with the stream's credentials.
On each backend it must

- run to ``completed``, every frame reaching the consumer once;
- keep the job's secrets (producer key, report secret) in a 0600 file of its workdir, out of what the scheduler
  keeps (Slurm's stored batch script, the local backend's stored spec), and delete that file when the stream ends;
- on ``DELETE``, stop the job's processes (local: the process group is empty; Slurm: ``squeue`` has no entry,
  ``sacct`` says CANCELLED) and end the stream ``cancelled``, its log still served;
- when the job fails -- a source path that does not exist, a step that crashes, the job's processes killed as a
  node failure would -- end ``failed`` with the reason in the stream and the log tail at ``/logs``, never
  ``completed``.

Slurm tests skip, naming why, where no Slurm runs; under ``PHOTONSTREAM_REQUIRE_SLURM=1`` (CI) they fail instead.
The Slurm job runs on this machine, so it reaches the API's buffer and report URL on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photonstream.client import Subscription, subscribe_stream
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.jobs import _shepherd
from photonstream.jobs.local import LocalBackend
from tests.api.harness import EXPERIMENT, Pki
from tests.api.system import DEADLINE_S, System, make_system
from tests.jobs.conftest import process_alive, require_slurm, wait_until

pytestmark = pytest.mark.timeout(180)

BACKENDS = ["local", pytest.param("slurm", marks=pytest.mark.slurm)]
SHAPE = [16, 16]


def slurm(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.fixture(params=BACKENDS)
def system(request: pytest.FixtureRequest, pki: Pki, tmp_path: Path) -> Iterator[System]:
    if request.param == "slurm":
        require_slurm()
    data = tmp_path / "data"
    (data / EXPERIMENT).mkdir(parents=True)
    yield from make_system(
        pki,
        tmp_path,
        job_backend=request.param,
        job_backends=["local", "slurm"],
        data_root=str(data / "{experiment}"),
    )


def backend_of(system: System) -> str:
    return system.api.services().settings.job_backend


def source(events: int, **changes: Any) -> dict[str, Any]:
    return {"type": "synthetic-diffraction", "detector": "custom", "shape": SHAPE, "events": events, **changes}


def job_pids(system: System, job_id: str) -> list[int]:
    """The job's live processes: the local job's process group, or what Slurm lists for the job on this node."""
    if backend_of(system) == "local":
        backend = system.api.services().backends.get("local")
        assert isinstance(backend, LocalBackend)
        group = backend.process_group(job_id)
        return _shepherd.group_members(group) if group is not None else []
    listed = subprocess.run(["scontrol", "listpids", job_id], capture_output=True, text=True, timeout=30)
    pids = [int(line.split()[0]) for line in listed.stdout.splitlines()[1:] if line.split()[:1] != ["-1"]]
    return [pid for pid in pids if process_alive(pid)]


def in_squeue(job_id: str) -> bool:
    return slurm("squeue", "-h", "-j", job_id, "-o", "%i").strip() != ""


def sacct_state(job_id: str) -> str:
    return slurm("sacct", "-n", "-P", "-X", "-j", job_id, "--format=State").strip()


def read_frames(subscription: Subscription, frames: int) -> None:
    """Read until ``frames`` frames came: the job is running and its data reaches the consumer."""
    seen = 0
    while seen < frames:
        message = next(subscription)
        assert not isinstance(message, EndMessage), f"the stream ended before the test acted on it: {message}"
        seen += isinstance(message, Frame)


def end_of(subscription: Subscription) -> EndMessage:
    """The end message the consumer gets next (frames still in the buffer come first)."""
    for message in subscription:
        if isinstance(message, EndMessage):
            return message
    raise AssertionError("the subscription ended without an end message")


def test_the_same_request_runs_to_completed(system: System) -> None:
    created = system.create(events=12)
    messages = list(subscribe_stream(created, timeout_s=DEADLINE_S))
    assert isinstance(messages[0], StartMessage) and isinstance(messages[-1], EndMessage)
    assert [m.event for m in messages if isinstance(m, Frame)] == list(range(12))
    assert messages[-1].reason == "completed"

    done = system.wait_state(created["id"], {"completed", "failed", "cancelled"})
    assert done["state"] == "completed", done["reason"]
    assert done["job_backend"] == backend_of(system) and done["job_id"]
    assert [state for state, _ in system.transitions(created["id"])] == ["queued", "starting", "streaming", "completed"]
    assert "completed; 12 events sent" in system.logs(created["id"])
    if backend_of(system) == "slurm":
        wait_until(lambda: sacct_state(done["job_id"]) == "COMPLETED", 30, "sacct to show the job COMPLETED")
        assert not in_squeue(done["job_id"])


def kept_by_the_scheduler(system: System, job_id: str) -> str:
    """What the backend keeps of the job: the batch script Slurm stores, the local backend's stored spec."""
    if backend_of(system) == "slurm":
        return slurm("scontrol", "write", "batch_script", job_id, "-")
    backend = system.api.services().backends.get("local")
    with sqlite3.connect(backend.state_dir / "local-jobs.sqlite3") as db:  # type: ignore[attr-defined]
        ((spec, argv),) = db.execute("SELECT spec, argv FROM jobs WHERE id = ?", (job_id,)).fetchall()
    return str(spec + argv)


def test_cancel_stops_the_job_and_keeps_its_log(system: System) -> None:
    created = system.create_with(source(100_000, rate_hz=20.0))
    consumer = subscribe_stream(created, timeout_s=DEADLINE_S)
    read_frames(consumer, 3)
    job_id = system.wait_state(created["id"], {"streaming"})["job_id"]
    pids = job_pids(system, job_id)
    assert pids, "the job has no running process"
    # the job's secrets: in a 0600 file of its workdir, not in what the scheduler keeps; the job read them from it
    workdir = system.api.services().settings.workdirs / created["id"]
    (secrets_file,) = workdir.glob("job-secrets-*.json")
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    job_secrets = json.loads(secrets_file.read_text())
    producer = json.loads(job_secrets["PHOTONSTREAM_BUFFER_CREDENTIALS"])
    assert producer["security"] == "curve" and len(producer["secret_key"]) == 40
    kept = kept_by_the_scheduler(system, job_id)
    assert str(secrets_file) in kept
    assert producer["secret_key"] not in kept and job_secrets["PHOTONSTREAM_REPORT_SECRET"] not in kept
    wait_until(lambda: bool(system.alice.get(f"/v1/streams/{created['id']}/progress").json()), 30, "a signed report")

    response = system.alice.delete(f"/v1/streams/{created['id']}")
    assert response.status_code == 200 and response.json()["state"] == "cancelled", response.text

    wait_until(lambda: not any(process_alive(pid) for pid in pids), 30, f"the job's processes {pids} to end")
    if backend_of(system) == "slurm":
        wait_until(lambda: not in_squeue(job_id), 30, f"squeue to drop job {job_id}")
        wait_until(lambda: sacct_state(job_id).startswith("CANCELLED"), 30, "sacct to show the job CANCELLED")
    backend = system.api.services().backends.get(backend_of(system))
    wait_until(lambda: backend.status(job_id).state.finished, 30, "the backend to see the job ended")
    system.api.services().launcher.step()  # a pass after the job ended leaves the cancelled stream alone
    shown = system.wait_state(created["id"], {"cancelled"})
    assert shown["reason"] == "cancelled by alice"
    assert [state for state, _ in system.transitions(created["id"])][-1] == "cancelled"
    log = system.logs(created["id"])
    assert f"{created['data_endpoint']['streams'][0]}: running on" in log, log  # the job's own first line
    assert not secrets_file.exists() and (workdir / "job.log").exists()  # the secrets went, the log stays
    if backend_of(system) == "slurm":
        assert f"JOB {job_id} ON" in log and "CANCELLED" in log, log  # slurmstepd's note of the scancel
    with consumer:
        end = end_of(consumer)
    assert (end.reason, end.error) == ("cancelled", "cancelled by alice")


def missing_source(system: System, tmp_path: Path) -> tuple[dict[str, Any], list[Any]]:
    return {"type": "hdf5", "files": ["missing-run.h5"]}, []


def crashing_step(system: System, tmp_path: Path) -> tuple[dict[str, Any], list[Any]]:
    pedestal = tmp_path / "data" / EXPERIMENT / "pedestal.npy"
    np.save(pedestal, np.zeros((3, 3), np.float32))  # the frames are 16×16: the step fails on the first one
    return source(12), [{"type": "calibrate", "pedestal": str(pedestal)}]


FAILURES = {"missing-source": missing_source, "crashing-step": crashing_step}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_job_ends_failed_with_its_reason_and_log(system: System, tmp_path: Path, failure: str) -> None:
    created = system.create_with(*FAILURES[failure](system, tmp_path))
    with subscribe_stream(created, timeout_s=DEADLINE_S) as consumer:
        end = end_of(consumer)  # from the run itself, or from the API where the run never opened the stream
    failed = system.wait_state(created["id"], {"completed", "failed", "cancelled"})
    assert failed["state"] == "failed", failed
    log_tail = system.logs(created["id"], tail=20)
    expected = "missing-run.h5" if failure == "missing-source" else "calibrate"
    assert expected in failed["reason"] and expected in log_tail, (failed["reason"], log_tail)
    assert end.reason == "failed" and expected in (end.error or ""), end
    assert "completed" not in [state for state, _ in system.transitions(created["id"])]


def test_a_killed_job_ends_failed_never_completed(system: System) -> None:
    """What a node failure does to a job: its processes die at once, nothing exits cleanly or reports its end."""
    created = system.create_with(source(100_000, rate_hz=20.0))
    consumer = subscribe_stream(created, timeout_s=DEADLINE_S)
    read_frames(consumer, 3)
    pids = job_pids(system, system.wait_state(created["id"], {"streaming"})["job_id"])
    assert pids
    for pid in pids:
        os.kill(pid, signal.SIGKILL)

    failed = system.wait_state(created["id"], {"completed", "failed", "cancelled"})
    assert failed["state"] == "failed", failed
    assert "completed" not in [state for state, _ in system.transitions(created["id"])]
    summary = "ended without recording an exit status" if backend_of(system) == "local" else "FAILED (signal 9)"
    log_tail = system.logs(created["id"], tail=20)
    assert f"{created['data_endpoint']['streams'][0]}: running on" in log_tail, log_tail
    assert summary in failed["reason"] and f"last output:\n{log_tail.strip()}" in failed["reason"], failed["reason"]
    with consumer:  # the job sent no end: the API ended the stream in the buffer
        end = end_of(consumer)
    assert end.reason == "failed" and summary in (end.error or ""), end
