"""Streams launched as real jobs on the local backend: completed, failed with the job's reason, cancelled while
running (the process group is gone), logs through the API. The launcher is stepped by hand, so nothing waits on a
timer except for the job itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from photonstream.jobs.base import JobState
from tests.api.harness import ApiHarness, Pki, step_until, stream_request
from tests.store.databases import DatabaseSpec


@pytest.fixture()
def jobs_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(
        spec,
        pki,
        tmp_path / "state",
        stream_handlers=[{"type": "null"}],  # no buffer service in these tests
        data_root=str(tmp_path / "data" / "{experiment}"),
        local_max_concurrent=2,
    )
    yield harness
    harness.close()
    spec.close()


def small_source(**changes: Any) -> dict[str, Any]:
    return {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": 4, **changes}


def test_a_stream_runs_to_completion_through_a_local_job(jobs_api: ApiHarness) -> None:
    alice = jobs_api.client(cert="alice")
    stream_id = alice.post("/v1/streams", json=stream_request(pipeline={"source": small_source()})).json()["id"]
    done = step_until(jobs_api, stream_id, {"completed", "failed"})
    assert done["state"] == "completed", done["reason"]
    assert done["job_backend"] == "local" and done["job_id"]
    assert done["created_at"] <= done["starting_at"] <= done["streaming_at"] <= done["finished_at"]
    history = [t["to_state"] for t in alice.get(f"/v1/streams/{stream_id}/transitions").json()]
    assert history == ["queued", "starting", "streaming", "completed"]
    workdir = Path(jobs_api.services().streams.get(stream_id).workdir or "")
    config = yaml.safe_load((workdir / "pipeline-run1.yaml").read_text())
    assert [h["type"] for h in config["handlers"]] == ["null"] and config["stream"]["stream_id"] == stream_id.replace(
        "-", ""
    )
    logs = alice.get(f"/v1/streams/{stream_id}/logs").json()
    assert "completed; 4 events sent" in logs["text"]
    head = alice.get(f"/v1/streams/{stream_id}/logs", params={"head": 1, "max_bytes": 20}).json()
    assert head["lines"] <= 1 and head["bytes"] <= 20


def test_a_failing_job_fails_the_stream_with_its_reason(jobs_api: ApiHarness) -> None:
    alice = jobs_api.client(cert="alice")
    body = stream_request(pipeline={"source": {"type": "hdf5", "files": ["missing-run.h5"]}})
    stream_id = alice.post("/v1/streams", json=body).json()["id"]
    failed = step_until(jobs_api, stream_id, {"completed", "failed"})
    assert failed["state"] == "failed"
    assert "missing-run.h5" in failed["reason"]


def test_cancelling_a_running_stream_stops_its_job(jobs_api: ApiHarness) -> None:
    alice = jobs_api.client(cert="alice")
    body = stream_request(pipeline={"source": small_source(events=100_000, rate_hz=5.0)})
    stream_id = alice.post("/v1/streams", json=body).json()["id"]
    streaming = step_until(jobs_api, stream_id, {"streaming", "completed", "failed"})
    assert streaming["state"] == "streaming", streaming["reason"]
    backend = jobs_api.services().backends.get("local")
    group = backend.process_group(streaming["job_id"])
    assert group is not None
    cancelled = alice.delete(f"/v1/streams/{stream_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert backend.status(streaming["job_id"]).state == JobState.CANCELLED
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    jobs_api.services().launcher.step()  # the launcher leaves finished streams alone
    assert alice.get(f"/v1/streams/{stream_id}").json()["state"] == "cancelled"


def test_a_stream_cancelled_while_queued_is_never_launched(jobs_api: ApiHarness) -> None:
    alice = jobs_api.client(cert="alice")
    stream_id = alice.post("/v1/streams", json=stream_request(pipeline={"source": small_source()})).json()["id"]
    alice.delete(f"/v1/streams/{stream_id}")
    jobs_api.services().launcher.step()
    shown = alice.get(f"/v1/streams/{stream_id}").json()
    assert (shown["state"], shown["job_id"]) == ("cancelled", None)


def test_a_stream_whose_job_cannot_be_submitted_fails_with_the_reason(jobs_api: ApiHarness) -> None:
    jobs_api.settings.workdirs.parent.mkdir(parents=True, exist_ok=True)
    jobs_api.settings.workdirs.write_text("a file where the stream workdirs should go")
    alice = jobs_api.client(cert="alice")
    stream_id = alice.post("/v1/streams", json=stream_request(pipeline={"source": small_source()})).json()["id"]
    jobs_api.services().launcher.step()
    shown = alice.get(f"/v1/streams/{stream_id}").json()
    assert shown["state"] == "failed" and shown["reason"].startswith("job submission failed")
    assert shown["job_id"] is None
