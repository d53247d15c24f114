"""Streams through the API: validation (422 with field paths, 413 before reading), the service's binding rules,
restart and two-process consistency on SQLite and PostgreSQL, paging, events, errors, metrics.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq

from photonstream.api.settings import load_settings
from photonstream.errors import ConfigError
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, stream_request
from tests.store.databases import DatabaseSpec


def post(api: ApiHarness, body: Any, who: str = "alice", **kwargs: Any) -> httpx.Response:
    return api.client(cert=who).post("/v1/streams", json=body, **kwargs)


# --- validation -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "error_type"),
    [
        ({"experiment": None}, "experiment", "string_type"),
        ({"experiment": "../etc"}, "experiment", "string_pattern_mismatch"),
        ({"runs": []}, "runs", "too_short"),
        ({"runs": [3, 3]}, "runs", "value_error"),
        ({"colour": "blue"}, "colour", "extra_forbidden"),
        ({"pipeline": {"source": {"type": "synthetic-diffraction", "events": -1}}}, "pipeline.source.events", None),
        ({"pipeline": {"source": {"type": "no-such-source"}}}, "pipeline.source", "union_tag_invalid"),
        (
            {"pipeline": {"source": {"type": "synthetic-diffraction"}, "steps": [{"type": "roi", "bogus": 1}]}},
            "pipeline.steps[0].bogus",
            "extra_forbidden",
        ),
        ({"consumers": [{"name": "ok", "policy": "sometimes"}]}, "consumers[0].policy", "string_pattern_mismatch"),
        ({"consumers": [{"name": "a"}, {"name": "a"}]}, "(body)", "value_error"),
        ({"resources": {"time_limit_s": 0}}, "resources.time_limit_s", "greater_than_equal"),
        ({"job_backend": "cloud"}, "job_backend", "value_error"),
        (
            {
                "pipeline": {
                    "source": {"type": "synthetic-diffraction"},
                    "steps": [{"type": "batch", "size": 4}, {"type": "filter"}],
                }
            },
            "pipeline.steps[0]",
            "value_error",
        ),
    ],
)
def test_malformed_bodies_get_422_naming_the_field(
    sqlite_api: ApiHarness, change: dict[str, Any], field: str, error_type: str | None
) -> None:
    body = {**stream_request(), **change}
    response = post(sqlite_api, body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert field in [e["field"] for e in errors], errors
    if error_type is not None:
        assert error_type in [e["type"] for e in errors if e["field"] == field]
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert sqlite_api.services().streams.find().total == 0


def test_invalid_json_is_400_with_its_reason_and_a_wrong_content_type_too(sqlite_api: ApiHarness) -> None:
    client = sqlite_api.client(cert="alice")
    broken = client.post("/v1/streams", content=b'{"experiment": ', headers={"content-type": "application/json"})
    assert broken.status_code == 400 and broken.json()["detail"].startswith("the body is not JSON")
    assert client.post("/v1/streams", content=b"experiment=x").status_code == 400


def test_oversized_bodies_are_refused_by_content_length_before_reading(sqlite_api: ApiHarness) -> None:
    limit = sqlite_api.settings.max_body_bytes
    body = json.dumps({**stream_request(), "padding": "x" * (limit + 1)}).encode()
    response = sqlite_api.client(cert="alice").post(
        "/v1/streams", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and str(limit) in response.json()["detail"]
    assert response.json()["request_id"]


def test_a_streamed_body_is_cut_off_at_the_limit_not_read_whole(sqlite_api: ApiHarness) -> None:
    limit = sqlite_api.settings.max_body_bytes
    chunk = b"x" * 65536
    total_chunks = 4 * limit // len(chunk)
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(total_chunks):
            pulled += 1
            yield chunk

    async def send() -> httpx.Response:
        from tests.api.harness import with_client_certificate

        app = with_client_certificate(sqlite_api.app, sqlite_api.pki.pem("alice"))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.post("/v1/streams", content=body(), headers={"content-type": "application/json"})

    response = asyncio.run(send())
    assert response.status_code == 413
    assert "content-length" not in {k.lower() for k in response.request.headers}  # chunked: no length to check
    assert pulled == limit // len(chunk) + 1 < total_chunks  # stopped at the first chunk past the limit


# --- binding rules --------------------------------------------------------------------------------------------


def test_the_service_chooses_handlers_and_stream_identity(sqlite_api: ApiHarness) -> None:
    response = post(sqlite_api, stream_request())
    assert response.status_code == 201
    created = response.json()
    stream_id = created["id"]
    assert created["state"] == "queued" and response.headers["location"] == f"/v1/streams/{stream_id}"
    endpoint = created["data_endpoint"]
    assert endpoint["address"] == sqlite_api.settings.buffer_endpoint
    assert endpoint["streams"] == [f"{EXPERIMENT}/1/{uuid.UUID(stream_id).hex}"]
    curve = endpoint["curve"]
    assert zmq.curve_public(curve["client_secret_key"].encode()).decode() == curve["client_public_key"]  # one pair
    other = post(sqlite_api, stream_request()).json()["data_endpoint"]["curve"]
    assert other["client_public_key"] != curve["client_public_key"]  # one pair per stream
    shown = sqlite_api.client(cert="alice").get(f"/v1/streams/{stream_id}").json()
    assert shown["data_endpoint"]["curve"]["client_secret_key"] is None  # the secret is shown once
    assert shown["data_endpoint"]["curve"]["client_public_key"] == curve["client_public_key"]
    [pipeline] = sqlite_api.services().streams.get(stream_id).spec["pipelines"]
    [handler] = pipeline["handlers"]
    assert (handler["type"], handler["address"]) == ("buffer", sqlite_api.settings.buffer_endpoint)
    assert pipeline["stream"] == {"experiment": EXPERIMENT, "run": 1, "stream_id": uuid.UUID(stream_id).hex}


def test_consumers_are_given_the_advertised_buffer_address_and_jobs_the_facilitys(pki: Pki, tmp_path: Path) -> None:
    spec = DatabaseSpec("sqlite", tmp_path)
    api = ApiHarness(spec, pki, tmp_path / "state", buffer_advertised_endpoint="tcp://gateway.example:15600")
    try:
        created = post(api, stream_request()).json()
        assert created["data_endpoint"]["address"] == "tcp://gateway.example:15600"
        [pipeline] = api.services().streams.get(created["id"]).spec["pipelines"]
        assert pipeline["handlers"][0]["address"] == api.settings.buffer_endpoint != "tcp://gateway.example:15600"
    finally:
        api.close()
        spec.close()


@pytest.mark.parametrize("value", ["tcp://gateway.example:*", "ipc:///run/buffer", "gateway.example:5600"])
def test_an_advertised_buffer_address_consumers_cannot_connect_to_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"buffer_advertised_endpoint: .*tcp://HOST:PORT"):
        load_settings(buffer_advertised_endpoint=value)


@pytest.mark.parametrize(
    ("source", "steps", "status", "message"),
    [
        ({"type": "hdf5", "files": ["run1.h5"]}, [], 201, None),
        ({"type": "hdf5", "files": ["/elsewhere/run1.h5"]}, [], 403, "pipeline.source.files[0]"),
        ({"type": "hdf5", "files": ["../mfx00002/run1.h5"]}, [], 403, "outside the experiment's data directory"),
        ({"type": "hdf5-follow", "directory": "run1", "pattern": "../../*.h5"}, [], 403, "pipeline.source.pattern"),
        ({"type": "psana", "exp": "mfx00002", "run": 1, "detector": "jf"}, [], 403, "pipeline.source.exp"),
        ({"type": "stream2", "address": "tcp://10.0.0.9:31001"}, [], 403, "pipeline.source.address"),
        (
            {"type": "synthetic-diffraction"},
            [{"type": "calibrate", "pedestal": "/etc/pedestal.npy"}],
            403,
            "pipeline.steps[0].pedestal",
        ),
        ({"type": "synthetic-diffraction"}, [{"type": "calibrate", "pedestal": "dark/pedestal.npy"}], 201, None),
        ({"type": "synthetic-diffraction", "model": "/etc/passwd"}, [], 403, "pipeline.source.model"),
        ({"type": "synthetic-diffraction", "model": "../mfx00002/x.pdb"}, [], 403, "pipeline.source.model"),
        ({"type": "synthetic-diffraction", "model": "1aki"}, [], 201, None),
        ({"type": "synthetic-diffraction", "model": "models/lyso.cif"}, [], 201, None),
    ],
)
def test_sources_and_constants_stay_inside_the_experiments_data(
    sqlite_api: ApiHarness,
    tmp_path: Path,
    source: dict[str, Any],
    steps: list[dict[str, Any]],
    status: int,
    message: str | None,
) -> None:
    app = sqlite_api.new_app(data_root=str(tmp_path / "data" / "{experiment}"))
    body = stream_request(pipeline={"source": source, "steps": steps})
    response = sqlite_api.client(cert="alice", app=app).post("/v1/streams", json=body)
    assert response.status_code == status, response.text
    if message:
        assert message in response.json()["detail"]


def test_without_a_data_root_no_file_is_readable(sqlite_api: ApiHarness) -> None:
    response = post(sqlite_api, stream_request(pipeline={"source": {"type": "hdf5", "files": ["run1.h5"]}}))
    assert response.status_code == 403 and "no data_root" in response.json()["detail"]


def test_a_source_with_runs_gets_one_pipeline_per_run_bound_to_the_experiment(sqlite_api: ApiHarness) -> None:
    body = stream_request(runs=[4, 5], pipeline={"source": {"type": "psana", "detector": "jungfrau"}})
    response = post(sqlite_api, body)
    assert response.status_code == 201, response.text
    stream = sqlite_api.services().streams.get(response.json()["id"])
    sources = [(p["source"]["exp"], p["source"]["run"], p["stream"]["run"]) for p in stream.spec["pipelines"]]
    assert sources == [(EXPERIMENT, 4, 4), (EXPERIMENT, 5, 5)]
    assert len(response.json()["data_endpoint"]["streams"]) == 2
    command = sqlite_api.services().launcher.command([Path("a.yaml"), Path("b.yaml")])
    assert command[:2] == ["/bin/sh", "-c"] and "a.yaml --quiet && " in command[2]


# --- persistence ----------------------------------------------------------------------------------------------


def test_a_restart_loses_no_state_and_two_apps_share_one_view(api: ApiHarness) -> None:
    first = api.app
    ids = [post(api, stream_request(), who=who).json()["id"] for who in ("alice", "alice", "bob")]
    api.client(cert="alice").delete(f"/v1/streams/{ids[0]}")
    before = {i: api.client(cert="root").get(f"/v1/streams/{i}").json() for i in ids}

    second = api.new_app()  # a restarted (or a second) API process on the same database
    after = {i: api.client(cert="root", app=second).get(f"/v1/streams/{i}").json() for i in ids}
    assert after == before
    listing = api.client(cert="alice", app=second).get("/v1/streams").json()
    assert listing["total"] == 2 and {s["id"] for s in listing["items"]} == set(ids[:2])
    transitions = api.client(cert="alice", app=second).get(f"/v1/streams/{ids[0]}/transitions").json()
    assert [t["to_state"] for t in transitions] == ["queued", "cancelled"]

    api.client(cert="bob", app=second).delete(f"/v1/streams/{ids[2]}")
    assert api.client(cert="bob", app=first).get(f"/v1/streams/{ids[2]}").json()["state"] == "cancelled"
    refused = api.client(cert="bob", app=first).delete(f"/v1/streams/{ids[2]}")
    assert refused.status_code == 409
    second.state.services.db.dispose()


def test_paging_and_filters(sqlite_api: ApiHarness) -> None:
    ids = [post(sqlite_api, stream_request()).json()["id"] for _ in range(5)]
    alice = sqlite_api.client(cert="alice")
    alice.delete(f"/v1/streams/{ids[1]}")
    first = alice.get("/v1/streams", params={"limit": 2}).json()
    assert (first["total"], first["next_offset"], [s["id"] for s in first["items"]]) == (5, 2, ids[:-3:-1])
    last = alice.get("/v1/streams", params={"limit": 2, "offset": 4}).json()
    assert (last["next_offset"], [s["id"] for s in last["items"]]) == (None, [ids[0]])
    cancelled = alice.get("/v1/streams", params={"state": "cancelled"}).json()
    assert [s["id"] for s in cancelled["items"]] == [ids[1]]
    both = alice.get("/v1/streams", params=[("state", "cancelled"), ("state", "queued")]).json()
    assert both["total"] == 5
    assert alice.get("/v1/streams", params={"experiment": "mfx00002"}).json()["total"] == 0
    assert alice.get("/v1/streams", params={"state": "sleeping"}).status_code == 422
    assert alice.get("/v1/streams", params={"limit": 0}).status_code == 422


# --- events, logs, errors, metrics ----------------------------------------------------------------------------


def parse_sse(text: str) -> list[dict[str, Any]]:
    events = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith(":"))
        events.append({"id": fields.get("id"), "event": fields["event"], "data": json.loads(fields["data"])})
    return events


def test_events_replay_the_transitions_and_end_with_the_stream(sqlite_api: ApiHarness) -> None:
    stream_id = post(sqlite_api, stream_request()).json()["id"]
    alice = sqlite_api.client(cert="alice")
    alice.delete(f"/v1/streams/{stream_id}")
    response = alice.get(f"/v1/streams/{stream_id}/events")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [(e["event"], e["data"].get("to") or e["data"]["state"]) for e in events] == [
        ("state", "queued"),
        ("state", "cancelled"),
        ("end", "cancelled"),
    ]
    resumed = parse_sse(alice.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": events[0]["id"]}).text)
    assert [e["event"] for e in resumed] == ["state", "end"]


def test_logs_of_a_stream_without_a_job_are_empty_and_limits_are_checked(sqlite_api: ApiHarness) -> None:
    stream_id = post(sqlite_api, stream_request()).json()["id"]
    alice = sqlite_api.client(cert="alice")
    assert alice.get(f"/v1/streams/{stream_id}/logs").json()["text"] == ""
    both = alice.get(f"/v1/streams/{stream_id}/logs", params={"tail": 5, "head": 5})
    assert both.status_code == 422 and both.json()["detail"][0]["field"] == "tail"
    assert alice.get(f"/v1/streams/{stream_id}/logs", params={"max_bytes": 0}).status_code == 422


def test_an_unexpected_error_is_a_500_with_a_request_id_and_no_traceback(
    sqlite_api: ApiHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(sqlite_api.services().streams, "find", broken)
    response = sqlite_api.client(cert="alice").get("/v1/streams")
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"] and "secret" not in response.text
    assert sqlite_api.client(cert="alice").get("/v1/me").status_code == 200  # the app goes on


def test_health_and_metrics_need_no_credential(sqlite_api: ApiHarness) -> None:
    post(sqlite_api, stream_request())
    anonymous = sqlite_api.client()
    health = anonymous.get("/v1/health").json()
    assert (health["status"], health["database"], health["auth_modes"]) == ("ok", "ok", ["mtls", "token"])
    anonymous.get("/v1/streams")  # a 401, counted
    text = anonymous.get("/metrics").text
    assert 'photonstream_streams{state="queued"} 1.0' in text
    assert 'photonstream_api_requests_total{method="POST",route="/v1/streams",status="201"} 1.0' in text
    assert 'photonstream_api_auth_decisions_total{outcome="deny"} 1.0' in text
