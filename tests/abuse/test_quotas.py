"""Resource exhaustion refused by quotas, with a reason naming the quota: active streams per user (API, 429, also
under a burst of parallel requests), server-sent-event connections per user (API, 429, given back on close),
request body size (413), consumer groups per stream and members per group (buffer, ERR code ``quota``).

Numbers asserted: accepted = the limit exactly, refused = every request past it, other users refused = 0, members
already in a group that lost messages = 0.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from photonstream.api.server import server_config
from photonstream.buffer import BufferService
from photonstream.client import ConsumerError, subscribe
from photonstream.frames import StartMessage
from tests.api.harness import ApiHarness, Pki, stream_request
from tests.api.servers import client_tls, free_port
from tests.buffer.support import Producer, events_of
from tests.store.databases import DatabaseSpec

STREAM = "quota/1/det"
MAX_STREAMS, MAX_EVENT_CONNECTIONS = 3, 2


@pytest.fixture()
def api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state", max_active_streams_per_user=MAX_STREAMS,
                         max_event_connections_per_user=MAX_EVENT_CONNECTIONS, events_poll_s=0.1,
                         buffer_bind="tcp://127.0.0.1:*", buffer_token_bind="tcp://127.0.0.1:*")  # fmt: skip
    yield harness
    harness.close()
    spec.close()


def create(api: ApiHarness, user: str) -> Any:
    return api.client(cert=user).post("/v1/streams", json=stream_request())


def test_active_streams_per_user_are_capped_with_429_naming_the_quota(api: ApiHarness) -> None:
    statuses = [create(api, "alice").status_code for _ in range(MAX_STREAMS + 2)]
    assert statuses == [201] * MAX_STREAMS + [429, 429]
    refused = create(api, "alice")
    assert refused.status_code == 429
    assert refused.json()["detail"].startswith("max_active_streams_per_user: 'alice' has 3 active streams (limit 3)")
    assert create(api, "bob").status_code == 201  # another user's quota is their own

    alice = api.client(cert="alice")
    first = alice.get("/v1/streams").json()["items"][0]["id"]
    assert alice.delete(f"/v1/streams/{first}").json()["state"] == "cancelled"  # a slot is free again
    assert create(api, "alice").status_code == 201
    assert create(api, "alice").status_code == 429
    denied = [e for e in api.services().policy.audit_entries(identity="alice", limit=100) if e.outcome == "deny"]
    assert sum("quota" in e.detail for e in denied) == 4


def test_a_burst_of_parallel_creates_gets_exactly_the_quota(api: ApiHarness) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: create(api, "bob").status_code, range(12)))
    assert sorted(statuses) == [201] * MAX_STREAMS + [429] * (12 - MAX_STREAMS)
    active = api.services().streams.find(owner="bob", states=["queued", "starting", "streaming"], limit=50)
    assert active.total == MAX_STREAMS


def test_a_body_over_the_limit_is_refused_before_it_is_read(api: ApiHarness) -> None:
    body = stream_request(detectors=["d"], padding="x" * (2 << 20))
    response = api.client(cert="alice").post("/v1/streams", json=body)
    assert response.status_code == 413 and "request body exceeds" in response.json()["detail"]
    assert api.services().streams.find(limit=5).total == 0


@pytest.fixture()
def served(api: ApiHarness, pki: Pki) -> Iterator[tuple[str, int]]:
    port = free_port()
    config = server_config(api.app, api.settings, port=port, certfile=pki.service[0], keyfile=pki.service[1],
                           log_level="critical")  # fmt: skip
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
        time.sleep(0.05)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(15)


def open_events(pki: Pki, address: tuple[str, int], user: str, path: str) -> tuple[http.client.HTTPSConnection, Any]:
    conn = http.client.HTTPSConnection(*address, context=client_tls(pki, user), timeout=10)
    conn.request("GET", path)
    return conn, conn.getresponse()


def test_event_connections_per_user_are_capped_and_given_back(
    api: ApiHarness, pki: Pki, served: tuple[str, int]
) -> None:
    stream_id = create(api, "alice").json()["id"]
    paths = [f"/v1/streams/{stream_id}/events", "/ui/api/events", f"/v1/streams/{stream_id}/events"]
    opened = [open_events(pki, served, "alice", path) for path in paths]
    statuses = [response.status for _, response in opened]
    assert statuses == [200] * MAX_EVENT_CONNECTIONS + [429]  # the dashboard's streams count too
    detail = json.loads(opened[-1][1].read())["detail"]
    assert detail.startswith("max_event_connections_per_user: 'alice' has 2 event connections open (limit 2)")
    bob_stream = create(api, "bob").json()["id"]
    bob, response = open_events(pki, served, "bob", f"/v1/streams/{bob_stream}/events")
    assert response.status == 200  # bob's quota is his own
    bob.close()

    opened[0][0].close()  # alice closes one: the server sees the disconnect and gives the slot back
    deadline = time.monotonic() + 10
    while True:
        conn, response = open_events(pki, served, "alice", paths[0])
        if response.status == 200:
            conn.close()
            break
        assert response.status == 429 and time.monotonic() < deadline, "the closed connection was never given back"
        conn.close()
        time.sleep(0.2)
    for conn, _ in opened[1:]:
        conn.close()


def test_consumer_groups_per_stream_and_members_per_group_are_capped(
    make_service: Callable[..., BufferService],
) -> None:
    service = make_service(max_groups_per_stream=3, max_members_per_group=4)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(10)

    full_readers = [subscribe(service.endpoint, STREAM, group=f"g{i}", timeout_s=10) for i in range(3)]
    for reader in full_readers:
        assert isinstance(next(reader), StartMessage)
    with pytest.raises(ConsumerError, match=r"max_groups_per_stream: the stream has 3 consumer groups \(limit 3\)"):
        next(subscribe(service.endpoint, STREAM, group="g3", timeout_s=10))

    members = [subscribe(service.endpoint, STREAM, group="g0", credit=1, timeout_s=10) for _ in range(30)]
    accepted = refused = 0
    for member in members:
        try:
            next(member)
            accepted += 1
        except ConsumerError as exc:
            assert "max_members_per_group: the group has 4 members (limit 4)" in str(exc)
            refused += 1
    assert (accepted, refused) == (3, 27)  # g0 already had its full reader

    for member in members:
        member.close()
    for reader in full_readers[1:]:
        reader.close()
    producer.frames(10)
    producer.end()
    producer.close()
    # the members already in: nothing lost, nothing twice (frames the closed members were sent come back to the
    # group, so they may arrive after newer ones)
    events = events_of(list(full_readers[0]))
    assert sorted(events) == list(range(20)) and len(events) == 20
    assert service.stats_now()["service"]["rejected"]["quota"] == 1 + 27
