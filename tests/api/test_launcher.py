"""Streams launched as real jobs on the local backend: completed, failed with the job's reason, cancelled while
running (the process group is gone), logs through the API. The launcher is stepped by hand, so nothing waits on a
timer except for the job itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from photonstream.client import subscribe_stream
from photonstream.frames import EndMessage
from photonstream.jobs.base import JobState
from tests.api.harness import ApiHarness, Pki, step_until, stream_request
from tests.buffer.support import events_of, free_port, listening, wait_until
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


# --- failed and cancelled streams end in the buffer too ---------------------------------------------------------


@pytest.fixture()
def buffer_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    """The API with its embedded CURVE buffer running (free ports), the launcher stepped by hand."""
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state", buffer_bind="tcp://127.0.0.1:*", buffer_token_bind=None,
                         buffer_isolation="thread", data_root=str(tmp_path / "data" / "{experiment}"),
                         local_max_concurrent=2, run_command=[sys.executable, "-m", "photonstream"])  # fmt: skip
    link = harness.services().launcher.link
    link.start()
    yield harness
    link.stop()
    harness.close()
    spec.close()


class Reader(threading.Thread):
    """A consumer with the stream's own credential (from the create response), reading until the end."""

    def __init__(self, created: dict[str, Any]) -> None:
        super().__init__(daemon=True)
        self.subscription = subscribe_stream(created, timeout_s=60)
        self.messages: list[Any] = []
        self.start()

    def run(self) -> None:
        self.messages.extend(self.subscription)

    def end(self) -> EndMessage:
        self.join(30)
        assert not self.is_alive(), "the consumer got no end message"
        assert isinstance(self.messages[-1], EndMessage)
        return self.messages[-1]


def create(api: ApiHarness, source: dict[str, Any]) -> dict[str, Any]:
    response = api.client(cert="alice").post("/v1/streams", json=stream_request(pipeline={"source": source}))
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_a_job_that_fails_before_its_start_message_ends_the_waiting_consumers(buffer_api: ApiHarness) -> None:
    created = create(buffer_api, {"type": "hdf5", "files": ["missing-run.h5"]})
    reader = Reader(created)  # subscribed before anything was written: it waits for a start that never comes
    failed = step_until(buffer_api, created["id"], {"completed", "failed"})
    end = reader.end()
    assert failed["state"] == "failed" and "missing-run.h5" in failed["reason"]
    assert (end.reason, end.error) == ("failed", " ".join(failed["reason"].split()))  # the reason, on one line
    assert reader.messages == [end]


def test_cancelling_a_running_stream_ends_it_for_its_consumers_after_what_was_stored(buffer_api: ApiHarness) -> None:
    created = create(buffer_api, small_source(events=100_000, rate_hz=20.0))
    reader = Reader(created)
    streaming = step_until(buffer_api, created["id"], {"streaming", "completed", "failed"})
    assert streaming["state"] == "streaming", streaming["reason"]
    address = created["data_endpoint"]["streams"][0]
    service = buffer_api.services().launcher.link.service
    wait_until(lambda: service.stats_now()["streams"][address]["head"] >= 3, what="three stored frames")
    assert buffer_api.client(cert="alice").delete(f"/v1/streams/{created['id']}").json()["state"] == "cancelled"
    end = reader.end()
    stored = service.stats_now()["streams"][address]["head"]
    assert (end.reason, end.error) == ("cancelled", "cancelled by alice")
    assert events_of(reader.messages) == list(range(stored))  # every stored frame, once, then the end
    buffer_api.services().launcher.step()  # the finished stream is left alone; the buffer's end stays
    assert service.stats_now()["streams"][address]["ended_by"] == ["cancelled", "cancelled by alice"]


def test_a_stream_whose_job_cannot_be_submitted_ends_in_the_buffer(buffer_api: ApiHarness) -> None:
    buffer_api.settings.workdirs.parent.mkdir(parents=True, exist_ok=True)
    buffer_api.settings.workdirs.write_text("a file where the stream workdirs should go")
    created = create(buffer_api, small_source())
    reader = Reader(created)
    buffer_api.services().launcher.step()
    end = reader.end()
    assert end.reason == "failed" and end.error.startswith("job submission failed")


def test_an_external_buffer_is_told_over_its_control_link(pki: Pki, tmp_path: Path) -> None:
    """``buffer serve --keys-dir`` in its own process: the end goes as FIN with the API's admin key."""
    keys, spec = tmp_path / "keys", DatabaseSpec("sqlite", tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", endpoint, "--keys-dir", str(keys)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: (keys / "buffer.key").exists() and listening(endpoint), 30, "the buffer to listen")
    api = ApiHarness(spec, pki, tmp_path / "state", buffer_endpoint=endpoint, buffer_keys_dir=keys)
    try:
        link = api.services().launcher.link
        assert not link.embedded and link.security == "curve"
        created = create(api, small_source())
        link.sync()  # the grants (what the link's thread does every buffer_sync_s)
        reader = Reader(created)
        wait_until(lambda: link.stats()["service"]["members"] == 1, what="the consumer to join")
        api.client(cert="alice").delete(f"/v1/streams/{created['id']}")  # still queued: it never opened
        end = reader.end()
        assert (end.reason, end.error) == ("cancelled", "cancelled by alice") and reader.messages == [end]
        address = created["data_endpoint"]["streams"][0]
        assert link.end_streams([address], "failed", "again") == 0  # idempotent over the wire too
    finally:
        api.close()
        process.terminate()
        process.wait(10)
        spec.close()
