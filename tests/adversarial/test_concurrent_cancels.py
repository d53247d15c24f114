"""Concurrent cancels (issue 13, the class of attack defect 6 came from): many clients cancelling the same streams
at once, some of them while the launcher is starting them, against the real service (uvicorn, launcher, embedded
buffer, local jobs), on SQLite and on PostgreSQL.

Numbers asserted: 5xx = 0; every DELETE answers 200 (the stream as it is now) or 409 (it already ended); every
stream ends ``cancelled`` with exactly one transition into that state; no job is left running; the buffer gets
the end once (its consumers are told ``cancelled``).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from photonstream.client import subscribe_stream
from photonstream.frames import Frame
from tests.adversarial.test_create_race import running_service
from tests.api.harness import Pki, stream_request
from tests.api.servers import client_tls
from tests.store.databases import DatabaseSpec

pytestmark = pytest.mark.timeout(240)

RUNNING, QUEUED, CANCELLERS = 4, 6, 8


def long_stream() -> dict[str, Any]:
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": 100_000,
              "rate_hz": 20.0}  # fmt: skip
    return stream_request(pipeline={"source": source}, consumers=[{"name": "analysis"}])


def test_many_clients_cancelling_the_same_streams_at_once(
    database_spec: DatabaseSpec, pki: Pki, tmp_path: Path
) -> None:
    settings = {"local_max_concurrent": RUNNING, "max_active_streams_per_user": None}
    with (
        running_service(database_spec, pki, tmp_path / "state", **settings) as (api, url),
        httpx.Client(base_url=url, verify=client_tls(pki, "alice"), timeout=60) as alice,
    ):
        created = [alice.post("/v1/streams", json=long_stream()) for _ in range(RUNNING)]
        assert [r.status_code for r in created] == [201] * RUNNING, created[-1].text
        running = [r.json() for r in created]
        deadline = time.monotonic() + 60
        while any(alice.get(f"/v1/streams/{s['id']}").json()["state"] != "streaming" for s in running):
            assert time.monotonic() < deadline, "the streams did not start"
            time.sleep(0.2)
        reading = subscribe_stream(running[0], timeout_s=30)  # a consumer on a stream being cancelled
        assert isinstance(next(m for m in reading if isinstance(m, Frame)), Frame)
        # more streams than the backend runs at once: these are queued or being launched while cancelled
        fresh = [alice.post("/v1/streams", json=long_stream()).json() for _ in range(QUEUED)]
        targets = [s["id"] for s in running + fresh]

        start = threading.Barrier(CANCELLERS)

        def cancel_all(index: int) -> list[int]:
            with httpx.Client(base_url=url, verify=client_tls(pki, "alice"), timeout=60) as client:
                start.wait()
                order = targets[index % len(targets) :] + targets[: index % len(targets)]
                return [client.delete(f"/v1/streams/{stream_id}").status_code for stream_id in order]

        with ThreadPoolExecutor(max_workers=CANCELLERS) as pool:
            statuses = [status for batch in pool.map(cancel_all, range(CANCELLERS)) for status in batch]
        assert [s for s in statuses if s >= 500] == []
        assert set(statuses) <= {200, 409}, statuses

        store = api.services().streams
        for stream_id in targets:
            shown = alice.get(f"/v1/streams/{stream_id}").json()
            assert shown["state"] == "cancelled", shown
            into = [t.to_state for t in store.transitions(stream_id)]
            assert into.count("cancelled") == 1 and into[-1] == "cancelled", into

        backend = api.services().backends.get("local")
        deadline = time.monotonic() + 30
        while True:
            jobs = [s.job_id for s in map(store.get, targets) if s.job_id]
            live = [job for job in jobs if not backend.status(job).state.finished]
            if not live or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert live == [], "jobs still running after their stream was cancelled"

        for _ in reading:  # the consumer gets what was stored, then the end
            pass
        assert reading.end is not None and reading.end.reason == "cancelled", reading.end
