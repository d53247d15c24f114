"""Issue 13, defect 6: a stream's secrets are written once, with the stream, in one transaction.

Before, the request handler committed the queued stream and then inserted its secrets in a second transaction;
a launcher pass in between found a stream without secrets, made its own and launched it, and the handler's insert
failed (``UNIQUE constraint failed: stream_secrets.stream_id``): the owner got a 500 and no keys while the stream
ran. Here the launcher is made to run in exactly that gap (a hook after the stream's commit wakes it and waits for
the launch), then 16 clients create 50 streams each against the real service, on SQLite and on PostgreSQL.

Numbers asserted: 5xx = 0; every created stream reads back to its owner with the keys the create response gave
(the consumer's CURVE pair and token match what the buffer is granted), and the raced stream's frames all reach
its owner by CURVE and by token.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import zmq
from sqlalchemy import event
from sqlalchemy.orm import Session

from photonstream.buffer.credentials import token_hash
from photonstream.client import subscribe_stream
from photonstream.frames import Frame
from photonstream.store.models import Stream
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, stream_request
from tests.api.servers import client_tls, running_server
from tests.store.databases import DatabaseSpec

pytestmark = pytest.mark.timeout(240)

CLIENTS, CREATES_PER_CLIENT = 16, 50
EVENTS = 4


@contextmanager
def running_service(spec: DatabaseSpec, pki: Pki, state_dir: Path, **settings: Any) -> Iterator[tuple[ApiHarness, str]]:
    """The API under uvicorn with its launcher and embedded buffer (free ports), jobs on the local backend."""
    api = ApiHarness(spec, pki, state_dir, buffer_bind="tcp://127.0.0.1:*", buffer_token_bind="tcp://127.0.0.1:*",
                     launcher_interval_s=0.2, **settings)  # fmt: skip
    api.services().db.dispose()
    api.app = api.new_app(launcher=True)
    try:
        with running_server(api.app, pki) as url:
            yield api, url
    finally:
        api.close()


@contextmanager
def launcher_runs_after_each_stream_commit(api: ApiHarness) -> Iterator[list[str]]:
    """After a transaction that inserted a stream commits, wake the launcher and wait until it moved the stream
    on from queued: the interleaving of the race, every time. Yields the ids of the streams it did this for."""
    launcher, store = api.services().launcher, api.services().streams
    raced: list[str] = []

    def before_flush(session: Session, *_: Any) -> None:
        for instance in session.new:
            if isinstance(instance, Stream):
                session.info["inserted stream"] = instance.id

    def after_commit(session: Session) -> None:
        stream_id = session.info.pop("inserted stream", None)
        if stream_id is None:
            return
        raced.append(stream_id)
        deadline = time.monotonic() + 15
        while store.get(stream_id).state == "queued" and time.monotonic() < deadline:
            launcher.wake()
            time.sleep(0.02)

    event.listen(Session, "before_flush", before_flush)
    event.listen(Session, "after_commit", after_commit)
    try:
        yield raced
    finally:
        event.remove(Session, "after_commit", after_commit)
        event.remove(Session, "before_flush", before_flush)


def frames_read(created: dict[str, Any], **options: Any) -> int:
    return sum(isinstance(message, Frame) for message in subscribe_stream(created, timeout_s=30, **options))


def test_a_launcher_pass_between_the_streams_commit_and_the_response(
    database_spec: DatabaseSpec, pki: Pki, tmp_path: Path
) -> None:
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": EVENTS}
    body = stream_request(pipeline={"source": source}, consumers=[{"name": "analysis"}])
    with (
        running_service(database_spec, pki, tmp_path / "state") as (api, url),
        httpx.Client(base_url=url, verify=client_tls(pki, "alice"), timeout=60) as alice,
    ):
        with launcher_runs_after_each_stream_commit(api) as raced:
            response = alice.post("/v1/streams", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        assert raced == [created["id"]]
        assert api.services().streams.get(created["id"]).state != "queued"  # launched before the response

        shown = alice.get(f"/v1/streams/{created['id']}")
        assert shown.status_code == 200 and shown.json()["owner"] == "alice"
        assert frames_read(created) == EVENTS  # CURVE
        assert frames_read(created, group="by-token", security="token") == EVENTS
        deadline = time.monotonic() + 60
        while (state := alice.get(f"/v1/streams/{created['id']}").json()["state"]) not in {"completed", "failed"}:
            assert time.monotonic() < deadline, f"stream stayed {state}"
            time.sleep(0.1)
        assert state == "completed"


@pytest.mark.slow  # ~35 s on SQLite, ~45 s on PostgreSQL with 2 cores
def test_parallel_creates_never_answer_5xx_and_every_stream_is_its_owners(
    database_spec: DatabaseSpec, pki: Pki, tmp_path: Path
) -> None:
    true = shutil.which("true") or "/bin/true"  # the jobs: launched and followed like any, at no cost
    settings = {"max_active_streams_per_user": None, "local_max_concurrent": 1, "run_command": [true]}
    with running_service(database_spec, pki, tmp_path / "state", **settings) as (api, url):
        tls = client_tls(pki)
        reports = api.services().launcher.reports

        def create_and_read_back(client_index: int) -> tuple[list[int], list[str]]:
            """(status of every create, what was wrong with a created stream as its owner reads it back)."""
            identity = f"racer{client_index:02d}"
            headers = {"Authorization": f"Bearer {pki.token(identity, (EXPERIMENT,))}"}
            statuses, created = [], []
            with httpx.Client(base_url=url, verify=tls, headers=headers, timeout=120) as client:
                for _ in range(CREATES_PER_CLIENT):
                    response = client.post("/v1/streams", json=stream_request())
                    statuses.append(response.status_code)
                    if response.status_code == 201:
                        created.append(response.json())
                wrong = [f"{c['id']}: {problem}" for c in created if (problem := read_back(client, identity, c))]
            return statuses, wrong

        def read_back(client: httpx.Client, identity: str, created: dict[str, Any]) -> str:
            shown = client.get(f"/v1/streams/{created['id']}")
            if shown.status_code != 200 or shown.json()["owner"] != identity:
                return f"GET answered {shown.status_code}"
            curve, token = created["data_endpoint"]["curve"], created["data_endpoint"]["token"]
            if shown.json()["data_endpoint"]["curve"]["client_public_key"] != curve["client_public_key"]:
                return "another consumer key than the create response's"
            if zmq.curve_public(curve["client_secret_key"].encode()).decode() != curve["client_public_key"]:
                return "the secret key given is not the public key's"
            secret = reports.secrets(created["id"])  # what the buffer's grant of the stream is made of
            if secret is None or (secret.consumer_token_user, secret.consumer_token_hash) != (
                token["username"], token_hash(token["password"])
            ):  # fmt: skip
                return "the token given is not the one granted"
            return ""

        with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
            results = list(pool.map(create_and_read_back, range(CLIENTS)))

        statuses = [status for batch, _ in results for status in batch]
        assert [s for s in statuses if s >= 500] == []
        assert statuses == [201] * CLIENTS * CREATES_PER_CLIENT
        assert [problem for _, wrong in results for problem in wrong] == []
        assert api.services().streams.find(limit=1).total == CLIENTS * CREATES_PER_CLIENT
