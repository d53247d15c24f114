"""kill -9 of a stream's job on the local backend, while a worker reads the stream from the buffer.

Two ways the job can die: its pipeline process is killed (as the OOM killer would; the job's shepherd survives and
records the signal), or the whole process group is (nothing records an exit). What the user sees: the API shows
the stream ``failed`` with the backend's reason (``killed by signal SIGKILL`` / ``ended without recording an exit
status``), never ``completed``; the worker (reading the API's own CURVE buffer with the stream's consumer
credential) has every frame the buffer stored, once, and then an end message ``failed`` with that reason: the
launcher ends the stream in the buffer when it records the failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from photonstream.testing.stream_worker import read_records
from tests.faults.support import Tally, api_consumer, finish, frames_done, report, start_worker, tally, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

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
    spec = DatabaseSpec("sqlite", root)
    api = ApiHarness(spec, Pki(root / "pki"), root / "state", data_root=str(root / "data" / "{experiment}"),
                     local_max_concurrent=2, buffer_bind="tcp://127.0.0.1:*", buffer_token_bind=None,
                     buffer_isolation="thread", buffer_options={"member_timeout_s": 2.0})  # fmt: skip
    link = api.services().launcher.link
    link.start()  # the API's embedded CURVE buffer (what the app's lifespan starts)
    worker = None
    try:
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": 100_000,
                  "rate_hz": 40.0}  # fmt: skip
        created = api.client(cert="alice").post("/v1/streams", json=stream_request(pipeline={"source": source}))
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        streaming = step_until(api, stream_id, {"streaming", "completed", "failed"}, timeout=40.0)
        assert streaming["state"] == "streaming", streaming["reason"]
        endpoint, address, credentials = api_consumer(created.json(), root)
        assert address == f"{EXPERIMENT}/1/{stream_id.replace('-', '')}"
        out = root / "worker.jsonl"
        worker = start_worker(endpoint, address, out, "--credit", "8", "--timeout-s", "30", *credentials)
        wait_for(lambda: frames_done(out) >= 10, 30, "the worker to read ten frames")
        kill_job(api, streaming["job_id"], request.param)
        shown = step_until(api, stream_id, {"completed", "failed", "cancelled"}, timeout=40.0)
        stored = int(link.service.stats_now()["streams"][address]["head"])
        wait_for(lambda: frames_done(out) >= stored, 20, "the worker to read every stored frame")
        with contextlib.suppress(AssertionError):  # a worker that gets no end message is stopped after 5 s
            finish(worker, "the worker", 5)
        yield Outcome(request.param, shown, stored, tally(stored, out), read_records(out)[1])
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        link.stop()
        api.close()
        spec.close()


def test_a_killed_job_fails_the_stream_with_the_reason_and_no_frame_is_lost(outcome: Outcome) -> None:
    shown = outcome.shown
    report(f"job_kill9[{outcome.how}]", state=shown["state"], reason=shown["reason"][:120],
           lost=outcome.counts.lost, duplicates=outcome.counts.duplicates, stored=outcome.stored,
           consumer_end=(outcome.worker_summary or {}).get("end_reason"))  # fmt: skip
    assert shown["state"] == "failed"
    assert "SIGKILL" in shown["reason"] or "without recording an exit status" in shown["reason"]
    assert outcome.stored >= 10
    assert outcome.counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application


def test_after_a_killed_job_the_consumers_get_a_failed_end(outcome: Outcome) -> None:
    assert outcome.worker_summary is not None, "the worker got no end message within 5 s"
    assert outcome.worker_summary["end_reason"] == "failed"
    assert outcome.worker_summary["end_error"] == " ".join(outcome.shown["reason"].split())  # the job's reason
    assert outcome.worker_summary["error"] is None
