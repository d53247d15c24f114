"""The parts as one system: request → job on the local backend → embedded buffer → consumer with the returned
credential; data-plane refusals; signed job reports (and replays); results back to the API; a lost report.

The API runs under uvicorn (the job reports to it over HTTPS, verifying our CA) with its launcher and embedded
buffer (CURVE and token listeners on free ports). The job runs ``python -m photonstream run``, which reports its
progress to the API (``reporter_from_env``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from photonstream import reporting
from photonstream.buffer.cli import fetch_stats
from photonstream.buffer.credentials import Credentials
from photonstream.client import AccessRefusedError, ConsumerError, ResultPublisher, subscribe, subscribe_stream
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.store.streams import StreamState
from tests.api.harness import ApiHarness, Pki, stream_request
from tests.api.servers import free_port
from tests.api.system import DEADLINE_S, System, make_system
from tests.buffer.support import listening
from tests.store.databases import DatabaseSpec


@pytest.fixture()
def system(pki: Pki, tmp_path: Path) -> Iterator[System]:
    yield from make_system(pki, tmp_path, buffer_isolation="thread")  # one test looks at the buffer's grants


def test_a_requested_stream_reaches_its_consumer_and_reports_its_progress(system: System) -> None:
    created = system.create(events=12)
    stream_id = created["id"]
    endpoint = created["data_endpoint"]
    assert endpoint["security"] == "curve" and endpoint["address"] == system.api.services().settings.buffer_endpoint
    messages = list(subscribe_stream(created, timeout_s=DEADLINE_S))  # the returned endpoint and credential
    assert isinstance(messages[0], StartMessage) and isinstance(messages[-1], EndMessage)
    assert [m.event for m in messages if isinstance(m, Frame)] == list(range(12))
    assert messages[-1].reason == "completed"

    done = system.wait_state(stream_id, {"completed", "failed", "cancelled"})
    assert done["state"] == "completed", done["reason"]
    history = system.transitions(stream_id)
    assert [state for state, _ in history] == ["queued", "starting", "streaming", "completed"]
    # "streaming" comes from the job's first report or, if the launcher's own look at the buffer is quicker, from
    # there: both mean data is flowing. The end comes from the job's last report.
    assert "buffer acked" in history[2][1] or "seen in the buffer" in history[2][1], history[2]
    assert history[3][1] == "every run ended (12 events)"
    (progress,) = system.alice.get(f"/v1/streams/{stream_id}/progress").json()
    assert progress["phase"] == "ended" and progress["report"]["data_acked"] == 12
    assert progress["report"]["end"]["counts"]["read"] == 12
    events = system.alice.get(f"/v1/streams/{stream_id}/events").text
    assert "event: progress" in events and '"events_per_s"' in events and "event: end" in events

    # the job got a producer credential of its own: granted to write, and not the consumers'
    service = system.api.services().launcher.link.service
    grant = service.access.snapshot.grants[endpoint["streams"][0]]
    consumer_key = f"curve:{endpoint['curve']['client_public_key']}"
    assert consumer_key in grant.consumers and consumer_key not in grant.producers
    assert any(p.startswith("curve:") for p in grant.producers) and not grant.producers & grant.consumers

    # the token link reads the same data (authenticated, not encrypted)
    token_messages = list(subscribe_stream(created, group="by-token", security="token", timeout_s=DEADLINE_S))
    assert [m.event for m in token_messages if isinstance(m, Frame)] == list(range(12))

    # a consumer publishes results; the API collects them, with provenance
    with ResultPublisher.from_stream_info(created, group="analysis", worker="w1") as results:
        results.publish("hit_rate", {"frames": 12, "hits": 3}, frames=(0, 11))
        results.publish("unit_cell", {"a": 79.1, "b": 79.1, "c": 38.0, "alpha": 90, "beta": 90, "gamma": 90})
    deadline = time.monotonic() + 10
    while len(items := system.alice.get(f"/v1/streams/{stream_id}/results").json()["items"]) < 2:
        assert time.monotonic() < deadline, "the results never reached the API"
        time.sleep(0.1)
    hit_rate, cell = items
    assert hit_rate["kind"] == "hit_rate" and hit_rate["data"] == {"frames": 12, "hits": 3, "rate": 0.25}
    assert (hit_rate["group"], hit_rate["worker"], hit_rate["first_frame"], hit_rate["last_frame"]) == (
        "analysis",
        "w1",
        0,
        11,
    )
    assert hit_rate["publisher"] == consumer_key and cell["data"]["c"] == 38.0
    only_cells = system.alice.get(f"/v1/streams/{stream_id}/results", params={"kind": "unit_cell"}).json()
    assert [r["id"] for r in only_cells["items"]] == [cell["id"]]
    replay = system.alice.get(f"/v1/streams/{stream_id}/events", params={"results_after": 0}).text
    assert replay.count("event: result") == 2


def test_consumers_without_the_streams_credential_are_refused(system: System) -> None:
    first, second = system.create(events=3), system.create(events=3)
    address = first["data_endpoint"]["streams"][0]
    buffer = first["data_endpoint"]["address"]
    with pytest.raises(ConsumerError, match="security handshake"):  # no credential at all
        list(subscribe(buffer, address, timeout_s=10))
    seen: list[Any] = []
    with pytest.raises(AccessRefusedError, match="may not read this stream"):  # the other stream's credential
        _, other = _credentials(second)
        for message in subscribe(buffer, address, credentials=other, timeout_s=10):
            seen.append(message)
    assert seen == []
    with (
        pytest.raises(AccessRefusedError, match="may not publish results"),
        ResultPublisher(buffer, address, _credentials(second)[1]) as results,
    ):
        results.publish("hit_rate", {"frames": 1, "hits": 0})
    shown = system.alice.get(f"/v1/streams/{first['id']}").json()["data_endpoint"]
    assert shown["curve"]["client_secret_key"] is None and shown["token"]["password"] is None  # shown once
    for created in (first, second):
        system.wait_state(created["id"], {"completed", "failed"})


def _credentials(created: dict[str, Any]) -> tuple[str, Any]:
    return Credentials.from_endpoint(created)


def test_reports_must_be_signed_fresh_and_new(system: System) -> None:
    api = system.api
    system.api.services().launcher.stop()  # no job: this test is the job
    client = api.client(app=system.app)
    created = system.create(events=1)
    stream_id, address = created["id"], created["data_endpoint"]["streams"][0]
    services = api.services()
    services.streams.transition(stream_id, StreamState.STARTING, "test: the launcher's claim", "launcher")
    services.launcher.reports.set_job_secrets(
        stream_id, producer_public_key="k" * 40, producer_token_user="p.x", producer_token_hash="0" * 64,
        report_secret="s3cret",
    )  # fmt: skip
    path = f"/v1/internal/streams/{stream_id}/report"

    def post(body: dict[str, Any], secret: str = "s3cret", now: float | None = None, sign_path: str = path) -> Any:
        raw = json.dumps(body).encode()
        headers = reporting.signed_headers(secret, sign_path, raw, now)
        return client.post(path, content=raw, headers=headers)

    streaming = {"seq": 10, "address": address, "phase": "streaming", "events_read": 5, "data_acked": 5}
    assert post(streaming, secret="guess").status_code == 401
    assert post(streaming, now=time.time() - 3600).status_code == 401  # signed an hour ago
    assert post(streaming, sign_path="/v1/internal/streams/other/report").status_code == 401
    unsigned = client.post(path, json=streaming)
    assert unsigned.status_code == 401 and "bad signature" in unsigned.json()["detail"]
    accepted = post(streaming)
    assert accepted.status_code == 200 and accepted.json() == {"accepted": True, "state": "streaming"}
    assert post(streaming).status_code == 409  # the same report again: a replay
    assert post({**streaming, "seq": 9}).status_code == 409  # older than the newest accepted
    assert post({"seq": 11, "address": "x/1/y", "phase": "streaming"}).status_code == 422
    assert post({"seq": 12, "address": address, "phase": "running"}).status_code == 422
    end = {"reason": "completed", "events_sent": 1, "counts": {"read": 1}}
    finished = post({"seq": 13, "address": address, "phase": "ended", "data_acked": 1, "end": end})
    assert finished.json()["state"] == "completed"
    assert system.transitions(stream_id)[-1] == ("completed", "every run ended (1 events)")
    audit = services.policy.audit_entries(action="stream.report", limit=50)
    assert {e.outcome for e in audit} == {"allow", "deny"} and all(e.identity.startswith("job:") for e in audit)


def test_a_lost_report_still_ends_the_stream_right(pki: Pki, tmp_path: Path) -> None:
    for system in make_system(pki, tmp_path, reports=False):  # the job has nowhere to report to
        created = system.create(events=5)
        done = system.wait_state(created["id"], {"completed", "failed"})
        assert done["state"] == "completed", done["reason"]
        states = system.transitions(created["id"])
        assert [s for s, _ in states] == ["queued", "starting", "streaming", "completed"]
        assert states[2][1] == "data flowing (seen in the buffer)"
        assert system.alice.get(f"/v1/streams/{created['id']}/progress").json() == []


def test_an_external_buffer_gets_grants_and_gives_results_over_its_control_link(pki: Pki, tmp_path: Path) -> None:
    """``photonstream buffer serve --keys-dir`` in its own process, the API pointed at it with the same keys dir."""
    keys = tmp_path / "keys"
    spec = DatabaseSpec("sqlite", tmp_path)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", endpoint, "--keys-dir", str(keys)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (keys / "buffer.key").exists() or not listening(endpoint):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr and process.stderr.read()
        time.sleep(0.05)
    api = ApiHarness(spec, pki, tmp_path / "state", buffer_endpoint=endpoint, buffer_keys_dir=keys,
                     results_poll_s=0.2)  # fmt: skip
    link = api.services().launcher.link
    try:
        assert link.security == "curve" and not link.embedded  # the buffer's key was found in the keys dir
        created = system_create(api)
        link.sync()  # what the link's thread does every buffer_sync_s (and at launch for one stream)
        with ResultPublisher.from_stream_info(created, group="g", worker="w") as results:
            results.publish("training_loss", {"step": 3, "loss": 0.25})
        assert link.collect_results() == 1 and link.collect_results() == 0  # stored once
        (item,) = api.client(cert="alice").get(f"/v1/streams/{created['id']}/results").json()["items"]
        assert item["data"] == {"step": 3, "loss": 0.25} and item["worker"] == "w"
        stats = link.stats()  # asked with the API's admin key
        assert stats["service"]["listeners"] == [{"security": "curve", "endpoint": endpoint}]
        with pytest.raises(ConsumerError, match="no answer"):  # a key nobody granted gets no answer at all
            fetch_stats(
                endpoint, 1.0, Credentials.curve(link.server_public_key, *(k.decode() for k in zmq.curve_keypair()))
            )
    finally:
        api.close()
        process.terminate()
        process.wait(10)
        spec.close()


def system_create(api: ApiHarness) -> dict[str, Any]:
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": 1}
    response = api.client(cert="alice").post("/v1/streams", json=stream_request(pipeline={"source": source}))
    assert response.status_code == 201, response.text
    return dict(response.json())
