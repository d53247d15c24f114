"""kill -9 of a stream's job on the local backend, while a worker reads the stream from the buffer.

Two ways the job can die: its pipeline process is killed (as the OOM killer would; the job's shepherd survives and
records the signal), or the whole process group is (nothing records an exit). What the user sees: the API shows
the stream ``failed`` with the backend's reason (``killed by signal SIGKILL`` / ``ended without recording an exit
status``), never ``completed``; the worker has every frame the buffer stored, once.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.buffer.support import start_service, stream_state
from tests.faults.support import Tally, finish, frames_done, report, start_worker, tally, wait_for
from tests.stream_worker import read_records

pytestmark = [
    pytest.mark.faults,
    pytest.mark.timeout(120),
    pytest.mark.xfail(
        reason="since the API↔buffer integration the launcher sends every stream to the API's own CURVE buffer, and "
        "this module still points streams at a plain test buffer (stream_handlers); it must move to the API's buffer "
        "and subscribe with the stream's credential",
        strict=False,
    ),
]

pytest.importorskip("fastapi")

from photonstream.jobs import _shepherd  # noqa: E402
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, step_until, stream_request  # noqa: E402
from tests.store.databases import DatabaseSpec  # noqa: E402

HOW = ("pipeline-process", "process-group")


@dataclass
class Outcome:
    how: str
    shown: dict[str, Any]
    stored: int
    counts: Tally
    worker_summary: dict[str, Any] | None


def kill_job(api: ApiHarness, job_id: str, how: str) -> None:
    group = api.services().backends.get("local").process_group(job_id)
    assert group is not None
    if how == "process-group":
        os.killpg(group, signal.SIGKILL)
        return
    pipeline = [pid for pid in _shepherd.group_members(group) if pid != group]  # the shepherd's pid is the group's
    assert pipeline, "the job's pipeline process is not running"
    for pid in pipeline:
        os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module", params=HOW)
def outcome(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    root = tmp_path_factory.mktemp(f"job-kill-{request.param}")
    service = start_service(member_timeout_s=2.0)
    spec = DatabaseSpec("sqlite", root)
    api = ApiHarness(spec, Pki(root / "pki"), root / "state",
                     stream_handlers=[{"type": "buffer", "address": service.endpoint, "send_timeout_s": 10}],
                     data_root=str(root / "data" / "{experiment}"), local_max_concurrent=2)  # fmt: skip
    worker = None
    try:
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": 100_000,
                  "rate_hz": 40.0}  # fmt: skip
        body = stream_request(pipeline={"source": source})
        stream_id = api.client(cert="alice").post("/v1/streams", json=body).json()["id"]
        streaming = step_until(api, stream_id, {"streaming", "completed", "failed"}, timeout=40.0)
        assert streaming["state"] == "streaming", streaming["reason"]
        address = f"{EXPERIMENT}/1/{stream_id.replace('-', '')}"
        out = root / "worker.jsonl"
        worker = start_worker(service.endpoint, address, out, "--credit", "8", "--timeout-s", "30")
        wait_for(lambda: frames_done(out) >= 10, 30, "the worker to read ten frames")
        kill_job(api, streaming["job_id"], request.param)
        shown = step_until(api, stream_id, {"completed", "failed", "cancelled"}, timeout=40.0)
        stored = int(stream_state(service.endpoint, address)["head"])
        wait_for(lambda: frames_done(out) >= stored, 20, "the worker to read every stored frame")
        with contextlib.suppress(AssertionError):  # a worker that gets no end message is stopped after 5 s
            finish(worker, "the worker", 5)
        yield Outcome(request.param, shown, stored, tally(stored, out), read_records(out)[1])
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        api.close()
        spec.close()
        service.stop()


def test_a_killed_job_fails_the_stream_with_the_reason_and_no_frame_is_lost(outcome: Outcome) -> None:
    shown = outcome.shown
    report(f"job_kill9[{outcome.how}]", state=shown["state"], reason=shown["reason"][:120],
           lost=outcome.counts.lost, duplicates=outcome.counts.duplicates, stored=outcome.stored)  # fmt: skip
    assert shown["state"] == "failed"
    assert "SIGKILL" in shown["reason"] or "without recording an exit status" in shown["reason"]
    assert outcome.stored >= 10
    assert outcome.counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application


@pytest.mark.xfail(
    strict=True,
    reason="known gap (integration: job-state callbacks): when a stream's job dies, nothing ends the stream in the "
    "buffer, so its consumers wait forever; the launcher should end it there with reason 'failed' and the job's "
    "reason when it records the failed state",
)
def test_after_a_killed_job_the_consumers_get_a_failed_end(outcome: Outcome) -> None:
    assert outcome.worker_summary is not None, "the worker got no end message within 5 s"
    assert outcome.worker_summary["end_reason"] == "failed"
