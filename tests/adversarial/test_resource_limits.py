"""Issue 13, defect 3: no ordinary user can request host-exhausting work.

Before, ``resources.ranks = 1000000`` was accepted (201: ``mpirun -n 1000000`` on the API host), so were
``events = 10**15`` and a 100000 × 100000 custom detector (20 GB a frame), and the embedded buffer's disk was
unbounded. Every limit is tried at its value (201) and one past it: 422 naming the request's field, the setting and
its value (per request), or 429 naming the setting, the caller's use and the limit (per identity, over active
streams). The embedded buffer gets the disk budgets.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from photonstream.api.settings import ApiSettings, host_memory_mb, load_settings
from photonstream.errors import ConfigError
from tests.api.harness import ApiHarness, Pki, stream_request
from tests.store.databases import DatabaseSpec

LIMITS = {
    "max_ranks_per_request": 4,
    "max_cores_per_request": 8,
    "max_memory_mb_per_request": 2000,
    "max_time_limit_s_per_request": 7200,
    "max_ranks_per_user": 6,
    "max_cores_per_user": 12,
    "max_memory_mb_per_user": 3000,
    "max_time_limit_s_per_user": 10000,
    "max_events_per_request": 1000,
    "max_frame_bytes": 32 * 32 * 2,
}


def harness(pki: Pki, tmp_path: Path, **settings: Any) -> Iterator[ApiHarness]:
    spec = DatabaseSpec("sqlite", tmp_path)
    api = ApiHarness(spec, pki, tmp_path / "state", max_active_streams_per_user=None,
                     buffer_bind="tcp://127.0.0.1:*", buffer_token_bind="tcp://127.0.0.1:*", **settings)  # fmt: skip
    yield api
    api.close()
    spec.close()


@pytest.fixture()
def limited_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    yield from harness(pki, tmp_path, **LIMITS)


@pytest.fixture()
def default_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    yield from harness(pki, tmp_path)


def post(api: ApiHarness, user: str = "alice", **changes: Any) -> Any:
    return api.client(cert=user).post("/v1/streams", json=stream_request(**changes))


def resources(**asked: Any) -> dict[str, Any]:
    return {"resources": {"time_limit_s": 600, **asked}}


def source(**options: Any) -> dict[str, Any]:
    return {"pipeline": {"source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32],
                                    "events": 3, **options}}}  # fmt: skip


def refused_422(response: Any) -> tuple[str, str]:
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error["field"], error["msg"]


PER_REQUEST = [  # (what the request asks at the limit, one past it, the field named, the setting named)
    (resources(ranks=4), resources(ranks=5), "resources.ranks", "max_ranks_per_request is 4"),
    (resources(ranks=2, cores_per_rank=4), resources(ranks=3, cores_per_rank=3), "resources.cores_per_rank",
     "max_cores_per_request is 8"),
    (resources(nodes=2, memory_mb=1000), resources(nodes=1, memory_mb=2001), "resources.memory_mb",
     "max_memory_mb_per_request is 2000"),
    ({"resources": {"time_limit_s": 7200}}, {"resources": {"time_limit_s": 7201}}, "resources.time_limit_s",
     "max_time_limit_s_per_request is 7200"),
    (source(events=1000), source(events=1001), "pipeline.source.events", "max_events_per_request is 1000"),
    (source(shape=[32, 32]), source(shape=[32, 33]), "pipeline.source.shape", "max_frame_bytes is 2048"),
    (source(shape=[32, 16], dtype="uint32"), source(shape=[32, 32], dtype="float32"), "pipeline.source.shape",
     "max_frame_bytes is 2048"),
]  # fmt: skip


@pytest.mark.parametrize(("at", "over", "field", "limit"), PER_REQUEST, ids=[c[2] + c[3][-5:] for c in PER_REQUEST])
def test_a_request_at_a_limit_is_accepted_and_one_past_it_refused_with_422(
    limited_api: ApiHarness, at: dict[str, Any], over: dict[str, Any], field: str, limit: str
) -> None:
    assert post(limited_api, **at).status_code == 201
    named, message = refused_422(post(limited_api, **over))
    assert named == field and limit in message
    assert limited_api.services().streams.find(limit=10).total == 1  # nothing stored for the refused one
    denied = [e for e in limited_api.services().policy.audit_entries(identity="alice", limit=20) if e.outcome == "deny"]
    assert len(denied) == 1 and limit in denied[0].detail


def test_other_sources_are_limited_by_their_own_frame_size_and_event_count(limited_api: ApiHarness) -> None:
    preset = {"pipeline": {"source": {"type": "synthetic-diffraction", "detector": "epix10k2m", "events": 3}}}
    assert refused_422(post(limited_api, **preset))[0] == "pipeline.source.detector"  # 16 × 352 × 384 × 2 bytes
    tof = {"type": "synthetic-tof", "events": 3, "channels": 1, "samples": 1024, "sample_period_ns": 50.0}
    assert post(limited_api, pipeline={"source": tof}).status_code == 201  # 2048 bytes: at the limit
    named, message = refused_422(post(limited_api, pipeline={"source": {**tof, "samples": 1025}}))
    assert named == "pipeline.source.samples" and "2050 bytes" in message
    capped = source(events=10**15)["pipeline"]
    assert post(limited_api, pipeline={**capped, "max_events": 1000}).status_code == 201  # the pipeline stops at 1000


def test_a_pool_workers_job_is_limited_like_the_streams(limited_api: ApiHarness) -> None:
    pool = {"name": "p", "group": "workers", "kind": "pull", "max_workers": 2, "resources": {"ranks": 5}}
    body = {"consumers": [{"name": "workers"}], "worker_pools": [pool]}
    named, message = refused_422(post(limited_api, **body))
    assert named == "worker_pools[0].resources.ranks" and "max_ranks_per_request is 4" in message


PER_USER = [  # (what each of two streams asks, what a third asking the rest + 1 gets refused with)
    ("ranks", {"ranks": 3}, {"ranks": 1}, "max_ranks_per_user: 'alice' has 6 ranks in 2 active streams"),
    ("cores", {"ranks": 2, "cores_per_rank": 3}, {"cores_per_rank": 1}, "max_cores_per_user: 'alice' has 12 cores"),
    ("memory", {"memory_mb": 1500}, {"memory_mb": 1}, "max_memory_mb_per_user: 'alice' has 3000 MB"),
    ("time", {"time_limit_s": 5000}, {"time_limit_s": 1}, "max_time_limit_s_per_user: 'alice' has 10000 s"),
]


@pytest.mark.parametrize(("name", "each", "more", "reason"), PER_USER, ids=[c[0] for c in PER_USER])
def test_an_identitys_active_streams_together_are_capped_with_429(
    limited_api: ApiHarness, name: str, each: dict[str, int], more: dict[str, int], reason: str
) -> None:
    ask = {"time_limit_s": 600, **each}
    first, second = (post(limited_api, resources=ask) for _ in range(2))
    assert (first.status_code, second.status_code) == (201, 201)  # together exactly at the limit
    refused = post(limited_api, resources={"time_limit_s": 600, **more} if name != "time" else more)
    assert refused.status_code == 429, refused.text
    assert refused.json()["detail"].startswith(reason)
    assert "(limit " in refused.json()["detail"]
    assert post(limited_api, "bob", resources=ask).status_code == 201  # another identity's total is its own

    alice = limited_api.client(cert="alice")
    assert alice.delete(f"/v1/streams/{first.json()['id']}").json()["state"] == "cancelled"
    assert post(limited_api, resources=ask).status_code == 201  # an ended stream counts no more
    assert post(limited_api, resources=ask).status_code == 429


def test_the_issues_requests_are_refused_by_the_defaults(default_api: ApiHarness) -> None:
    cores = os.cpu_count() or 1
    named, message = refused_422(post(default_api, resources={"ranks": 1_000_000}))
    assert named == "resources.ranks" and f"max_ranks_per_request is {cores}" in message
    assert post(default_api, resources={"ranks": cores}).status_code == 201  # the host's cores: allowed
    assert refused_422(post(default_api, **source(events=10**15)))[0] == "pipeline.source.events"
    assert refused_422(post(default_api, **source(shape=[100_000, 100_000])))[0] == "pipeline.source.shape"
    too_much = host_memory_mb() + 1
    assert refused_422(post(default_api, resources={"memory_mb": too_much}))[0] == "resources.memory_mb"
    assert refused_422(post(default_api, resources={"time_limit_s": 86401}))[0] == "resources.time_limit_s"


def test_the_embedded_buffer_gets_the_disk_budgets(pki: Pki, tmp_path: Path) -> None:
    defaults = ApiSettings()
    assert defaults.buffer_options == {"disk_per_stream": 32 << 30, "disk_total": 128 << 30}
    given = ApiSettings(buffer_options={"disk_total": 5 << 30})  # a buffer option still wins over the default
    assert given.buffer_options == {"disk_per_stream": 32 << 30, "disk_total": 5 << 30}
    with pytest.raises(ConfigError, match=r"buffer_disk_total and buffer_options\.disk_total differ"):
        load_settings(buffer_disk_total=1 << 30, buffer_options={"disk_total": 2 << 30})

    for api in harness(pki, tmp_path, buffer_disk_total=3 << 30, buffer_disk_per_stream=1 << 30):
        with api.client(cert="alice"):  # the lifespan: the embedded buffer starts
            assert api.services().launcher.link.stats()["service"]["disk_budget"] == 3 << 30


def test_a_burst_of_parallel_creates_stays_within_a_per_identity_total(pki: Pki, tmp_path: Path) -> None:
    for api in harness(pki, tmp_path, max_ranks_per_request=2, max_ranks_per_user=6):  # no active-streams quota
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda _, a=api: post(a, resources={"ranks": 2}).status_code, range(12)))
        assert sorted(statuses) == [201] * 3 + [429] * 9
