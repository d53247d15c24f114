"""Elastic worker pools through the API: a real embedded buffer (CURVE), real local (and Slurm) jobs, the launcher
stepped by hand. A pool of slow workers grows under lag, shrinks back, and its lossless group gets every frame
exactly once; cancelling the stream ends the workers' processes; a restarted API cancels what a killed one left
and starts the pool again; bad pool requests are refused with the reason and the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from photonstream.jobs.base import JobState
from tests.api.harness import ApiHarness, Pki, step_until, stream_request
from tests.jobs.conftest import slurm_cluster
from tests.jobs.test_elastic import read_processed
from tests.store.databases import DatabaseSpec

WORKER = Path(__file__).parents[1] / "jobs" / "elastic_worker.py"
PATIENCE_S = 60.0
LEASE_S = 2.0  # short, so that a second API takes the pools over soon after the first stopped renewing
__all__ = ["slurm_cluster"]


def slow_kind(out: Path) -> dict[str, Any]:
    """A worker kind for the tests: the slow recording worker of tests/jobs, its work per frame an option."""
    command = [sys.executable, str(WORKER), "{endpoint}", "{stream}", "{group}", str(out), "{worker}"]
    return {
        "command": [*command, "--work-s", "{work_s}"],
        "options": {"work_s": {"pattern": r"^0\.[0-9]{1,3}$", "default": "0.1"}},
    }


def make_api(pki: Pki, tmp_path: Path, **settings: Any) -> ApiHarness:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(
        spec,
        pki,
        tmp_path / "state",
        buffer_bind="tcp://127.0.0.1:*",
        buffer_token_bind=None,
        buffer_isolation="thread",  # a test looks at the buffer's grants
        run_command=[sys.executable, "-m", "photonstream"],
        worker_kinds={"slow": slow_kind(tmp_path / "out"), **settings.pop("worker_kinds", {})},
        **{"launcher_interval_s": 0.2, "pool_lease_s": LEASE_S, "local_max_concurrent": 8, **settings},
    )
    harness.services().launcher.link.start()
    harness._spec = spec  # type: ignore[attr-defined]
    return harness


def close_api(harness: ApiHarness) -> None:
    harness.close()
    harness.services().launcher.link.stop()
    harness._spec.close()  # type: ignore[attr-defined]


@pytest.fixture()
def pool_api(pki: Pki, tmp_path: Path) -> Iterator[ApiHarness]:
    harness = make_api(pki, tmp_path)
    yield harness
    close_api(harness)


def pool_request(**pool: Any) -> dict[str, Any]:
    return {"name": "slow", "group": "workers", "kind": "slow", "min_workers": 1, "max_workers": 3, "target_lag": 10,
            "scale_down_below": 0.5, "scale_up_cooldown_s": 0.5, "scale_down_cooldown_s": 1.0, "max_step": 2,
            "stop_grace_s": 10.0, "interval_s": 0.2, **pool}  # fmt: skip


def source(events: int, rate_hz: float) -> dict[str, Any]:
    return {"type": "synthetic-diffraction", "detector": "custom", "shape": [8, 8], "events": events,
            "rate_hz": rate_hz, "seed": 1}  # fmt: skip


def create(api: ApiHarness, events: int, rate_hz: float, **pool: Any) -> str:
    body = stream_request(
        pipeline={"source": source(events, rate_hz)},
        consumers=[{"name": "workers", "policy": "lossless"}, {"name": "monitor", "policy": "latest"}],
        worker_pools=[pool_request(**pool)],
    )
    created = api.client(cert="alice").post("/v1/streams", json=body)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def step_while(api: ApiHarness, condition: Callable[[], bool], what: str, timeout: float = PATIENCE_S) -> None:
    deadline = time.monotonic() + timeout
    while condition():
        api.services().launcher.step()
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what}")
        time.sleep(0.1)


def pools_of(api: ApiHarness, stream_id: str) -> dict[str, Any]:
    shown = api.client(cert="alice").get(f"/v1/streams/{stream_id}/pools")
    assert shown.status_code == 200, shown.text
    return dict(shown.json())


def live_process_groups(api: ApiHarness, stream_id: str, count: int) -> dict[str, int]:
    """Job id → process group of the pool's live workers, once there are ``count`` of them running."""
    manager, backend = api.services().launcher.pools, api.services().backends.get("local")
    found: dict[str, int] = {}

    def missing() -> bool:
        found.clear()
        for job_id in manager.live_workers(stream_id).get("slow", []):
            group = backend.process_group(job_id)
            if group is not None and backend.status(job_id).state == JobState.RUNNING:
                found[job_id] = group
        return len(found) < count

    step_while(api, missing, f"{count} running workers")
    return dict(found)


def group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_pool_grows_under_lag_shrinks_back_and_its_group_gets_every_frame_once(
    pool_api: ApiHarness, tmp_path: Path
) -> None:
    events = 300  # at 20 Hz for 15 s; one worker does < 10 frames/s, three do 30: the backlog drains mid-stream
    stream_id = create(pool_api, events, 20.0)
    alice = pool_api.client(cert="alice")
    assert pools_of(pool_api, stream_id)["pools"][0]["state"] == "waiting"
    step_until(pool_api, stream_id, {"streaming"})
    step_while(pool_api, lambda: pools_of(pool_api, stream_id)["pools"][0]["state"] != "running", "the pool")
    secret = pool_api.services().launcher.reports.secrets(stream_id)
    assert secret is not None and secret.worker_public_key  # the workers' own credential, granted in the buffer
    grant = pool_api.services().launcher.link.service.access.snapshot.grants
    assert f"curve:{secret.worker_public_key}" in next(iter(grant.values())).consumers

    def pool_running() -> bool:
        state = alice.get(f"/v1/streams/{stream_id}").json()["state"]
        return state not in ("completed", "failed") or pools_of(pool_api, stream_id)["pools"][0]["state"] != "stopped"

    step_while(pool_api, pool_running, "the stream to complete and the pool to stop", timeout=120)
    assert alice.get(f"/v1/streams/{stream_id}").json()["state"] == "completed"

    shown = pools_of(pool_api, stream_id)
    (pool,) = shown["pools"]
    assert (pool["state"], pool["workers"], pool["live_jobs"]) == ("stopped", 0, [])
    history = shown["events"]
    actions = [event["action"] for event in history]
    assert actions[:2] == ["lag-unknown", "start-worker"] or actions[0] == "start-worker", actions
    assert "scale-up" in actions and max(event["workers"] for event in history) > 1, actions
    assert all(event["workers"] <= 3 for event in history)
    ups = [event for event in history if event["action"] == "scale-up"]
    assert all((event["lag"] or 0) > 10 for event in ups)  # it grew because the lag was above the target
    assert "scale-down" in actions[: actions.index("stream-drained")], actions  # ... and shrank once it caught up
    first_down = next(event for event in history if event["action"] == "scale-down")
    assert first_down["lag"] < 5 and first_down["workers"] < max(event["workers"] for event in history)
    assert actions[-1] == "stopped"

    processed, left = read_processed(tmp_path / "out")
    assert sorted(processed) == list(range(events)), "a frame of the lossless group was lost or processed twice"
    started = {job for event in history for job in event["jobs"]}
    backend = pool_api.services().backends.get("local")
    assert len(started) == len(left) and all(backend.status(job).state.finished for job in started)

    # the workers' credential is withdrawn once the pools ended; the events also went to the stream's feed
    pool_api.services().launcher.step()
    secret = pool_api.services().launcher.reports.secrets(stream_id)
    assert secret is not None and secret.worker_public_key is None
    feed = alice.get(f"/v1/streams/{stream_id}/events").text
    assert feed.count("event: pool") == len(history) and '"action": "scale-up"' in feed
    print(json.dumps({"frames": events, "peak_workers": max(e["workers"] for e in history), "actions": actions}))


def test_cancelling_the_stream_ends_its_workers_processes(pool_api: ApiHarness) -> None:
    stream_id = create(pool_api, 100_000, 5.0, min_workers=2, max_workers=2)
    step_until(pool_api, stream_id, {"streaming"})
    groups = live_process_groups(pool_api, stream_id, 2)
    cancelled = pool_api.client(cert="alice").delete(f"/v1/streams/{stream_id}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert all(group_gone(group) for group in groups.values())
    backend = pool_api.services().backends.get("local")
    assert {backend.status(job).state for job in groups} == {JobState.CANCELLED}
    shown = pools_of(pool_api, stream_id)
    assert shown["pools"][0]["state"] == "stopped"
    assert "stream cancelled by alice" in shown["events"][-1]["detail"]
    pool_api.services().launcher.step()  # a finished stream's pool is not started again
    assert pool_api.services().launcher.pools.live_workers(stream_id) == {}


STUBBORN = Path(__file__).with_name("stubborn_worker.py")


def test_stopping_pools_cancels_all_their_workers_at_once(pki: Pki, tmp_path: Path) -> None:
    """Four workers in two pools of a stream, four in another stream's; each holds on after SIGTERM until all of
    its stream's workers got theirs (a cancel waits for the worker's processes to end: one after the other, the
    first would wait in vain and be killed after its grace). Cancelling the stream, and stopping the API, cancel
    them all at once: every worker saw all SIGTERMs of its stream and ended on its own."""
    out = tmp_path / "stubborn"
    kind = {"command": [sys.executable, str(STUBBORN), str(out) + "/{stream_tag}", "{worker}", "4"],
            "options": {"stream_tag": {"pattern": r"^[a-z]+$"}}}  # fmt: skip
    harness = make_api(pki, tmp_path, worker_kinds={"stubborn": kind}, local_max_concurrent=12)
    try:
        streams = {}
        for tag in ("cancelled", "stopped"):
            pools = [pool_request(name=f"{group}-pool", group=group, kind="stubborn", min_workers=2, max_workers=2,
                                  options={"stream_tag": tag}) for group in ("workers", "more")]  # fmt: skip
            body = stream_request(pipeline={"source": source(100_000, 5.0)}, worker_pools=pools,
                                  consumers=[{"name": "workers"}, {"name": "more"}])  # fmt: skip
            created = harness.client(cert="alice").post("/v1/streams", json=body)
            assert created.status_code == 201, created.text
            streams[tag] = created.json()["id"]

        def not_all_ready() -> bool:
            return len(list(out.glob("*/*.ready"))) < 8

        step_while(harness, not_all_ready, "eight running workers")
        manager = harness.services().launcher.pools
        jobs = {tag: [job for ids in manager.live_workers(sid).values() for job in ids] for tag, sid in streams.items()}
        assert [len(ids) for ids in jobs.values()] == [4, 4]

        assert harness.client(cert="alice").delete(f"/v1/streams/{streams['cancelled']}").status_code == 200
        signed = set((out / "cancelled" / "terms").read_text().split())
        assert signed == {path.stem for path in (out / "cancelled").glob("*.ready")} and len(signed) == 4
        assert len(list((out / "cancelled").glob("*.saw-all"))) == 4  # none was killed waiting for the others
        assert not (out / "stopped" / "terms").exists()

        manager.close()  # the API stops: the other stream's four, at once too (recorded as interrupted)
        assert len(list((out / "stopped").glob("*.saw-all"))) == 4
        backend = harness.services().backends.get("local")
        assert {backend.status(job).state for ids in jobs.values() for job in ids} == {JobState.CANCELLED}
        last = {event["pool"]: event["action"] for event in pools_of(harness, streams["stopped"])["events"]}
        assert last == {"workers-pool": "interrupted", "more-pool": "interrupted"}
    finally:
        close_api(harness)


def test_a_restarted_api_cancels_the_workers_a_killed_one_left_and_starts_the_pool_again(
    pool_api: ApiHarness,
) -> None:
    stream_id = create(pool_api, 100_000, 5.0)
    step_until(pool_api, stream_id, {"streaming"})
    (old_job, old_group), = live_process_groups(pool_api, stream_id, 1).items()  # fmt: skip
    pool_api.services().launcher.pools.halt_without_cancelling()  # the API process dies; its workers run on
    assert not group_gone(old_group)

    pool_api.app = pool_api.new_app()  # a new API on the same database, state and buffer
    pool_api.services().launcher.link = pool_api.services(pool_api.app).launcher.link
    restarted = pool_api.services()
    restarted.launcher.pools.link = old_link = restarted.launcher.link
    assert old_link is not None
    restarted.launcher.link.start()
    try:
        (new_job, _new_group), = live_process_groups(pool_api, stream_id, 1).items()  # fmt: skip
        assert new_job != old_job
        assert restarted.backends.get("local").status(old_job).state == JobState.CANCELLED
        # the old shepherd was a child of this test process (the 'killed' API): gone once its old backend reaps it
        step_while(pool_api, lambda: not group_gone(old_group), "the leftover worker's processes to be gone", 15)
        events = pools_of(pool_api, stream_id)["events"]
        leftover = next(event for event in events if "earlier API process" in event["detail"])
        assert leftover["action"] == "stopped" and leftover["jobs"] == [old_job]
        assert "the pool starts again" in leftover["detail"]
        assert events[-1]["action"] == "start-worker" and new_job in events[-1]["jobs"]
        pool_api.client(cert="alice").delete(f"/v1/streams/{stream_id}")
    finally:
        restarted.launcher.stop()
        restarted.launcher.link.stop()


def test_two_apis_on_one_database_run_a_pool_once_and_the_second_takes_it_over_when_the_lease_lapses(
    pool_api: ApiHarness,
) -> None:
    first = pool_api.services()
    second_app = pool_api.new_app()  # a second API process on the same database and state, the launcher on
    second = pool_api.services(second_app)
    second.launcher.link = second.launcher.pools.link = first.launcher.link  # and the same (embedded) buffer
    managers = {"first": first.launcher.pools, "second": second.launcher.pools}
    launchers = {"first": first.launcher, "second": second.launcher}
    backend = first.backends.get("local")
    try:
        stream_id = create(pool_api, 100_000, 5.0, min_workers=1, max_workers=2)

        def step_while(condition: Callable[[], bool], what: str, stepping: tuple[str, ...]) -> None:
            deadline = time.monotonic() + PATIENCE_S
            while condition():
                for name in stepping:
                    launchers[name].step()
                assert time.monotonic() < deadline, f"still waiting for {what}"
                time.sleep(0.1)

        def running_worker(name: str) -> str | None:
            jobs = managers[name].live_workers(stream_id).get("slow", [])
            return next((job for job in jobs if backend.status(job).state == JobState.RUNNING), None)

        step_while(lambda: running_worker("first") is None, "the first API's worker", ("first", "second"))
        until = time.monotonic() + 2 * LEASE_S  # both keep stepping, past a whole lease: the second stays out
        step_while(lambda: time.monotonic() < until, "two leases' time", ("first", "second"))
        assert managers["second"].live_workers(stream_id) == {} and not managers["second"].holds_lease()
        (old_job,) = worker_jobs = {job for event in pools_of(pool_api, stream_id)["events"] for job in event["jobs"]}
        assert worker_jobs == set(managers["first"].live_workers(stream_id)["slow"])
        holder = managers["first"].leases.holder("pools")
        assert holder is not None and holder.owner == managers["first"].owner
        old_group = backend.process_group(old_job)
        assert old_group is not None

        # the first API stops renewing (its launcher hangs): its pool stops watching by itself once the lease runs
        # out, and the second takes over: cancels the worker it left and starts the pool again
        step_while(lambda: running_worker("second") is None, "the second API's worker", ("second",))
        assert not managers["first"].holds_lease()
        threads = [r.thread for r in managers["first"]._running.get(stream_id, {}).values()]
        assert threads and not any(thread is not None and thread.is_alive() for thread in threads)
        assert backend.status(old_job).state == JobState.CANCELLED
        step_while(lambda: not group_gone(old_group), "the first API's worker processes to be gone", ())
        events = pools_of(pool_api, stream_id)["events"]
        takeover = next(event for event in events if "earlier API process" in event["detail"])
        assert takeover["action"] == "stopped" and takeover["jobs"] == [old_job]
        new_job = running_worker("second")
        assert events[-1]["action"] == "start-worker" and events[-1]["jobs"] == [new_job] and new_job != old_job
        holder = managers["first"].leases.holder("pools")
        assert holder is not None and holder.owner == managers["second"].owner

        # the first API comes back: the pools are the second's now, it starts nothing
        until = time.monotonic() + LEASE_S
        step_while(lambda: time.monotonic() < until, "a lease's time", ("first", "second"))
        assert managers["first"].live_workers(stream_id) == {} and not managers["first"].holds_lease()
        jobs = {job for event in pools_of(pool_api, stream_id)["events"] for job in event["jobs"]}
        assert jobs == {old_job, new_job}
        assert set(managers["second"].live_workers(stream_id)["slow"]) == {new_job}

        new_group = backend.process_group(new_job)
        cancelled = pool_api.client(cert="alice", app=second_app).delete(f"/v1/streams/{stream_id}")
        assert cancelled.status_code == 200
        assert new_group is not None and group_gone(new_group)  # the holder's cancel ended its worker
    finally:
        second.launcher.stop()
        second.backends.close()
        second.db.dispose()


# --- refused requests -----------------------------------------------------------------------------------------


def refused(api: ApiHarness, pools: list[dict[str, Any]], cert: str = "alice", **changes: Any) -> tuple[int, Any]:
    body = stream_request(consumers=[{"name": "workers"}, {"name": "monitor", "policy": "sample:2"}],
                          worker_pools=pools, **changes)  # fmt: skip
    response = api.client(cert=cert).post("/v1/streams", json=body)
    return response.status_code, response.json().get("detail")


def field_error(detail: Any) -> tuple[str, str]:
    (error,) = detail
    return error["field"], error["msg"]


def test_bad_pool_requests_are_refused_with_the_field_and_reason(api: ApiHarness) -> None:
    pull = {"name": "p", "group": "workers", "kind": "pull"}
    status, detail = refused(api, [{**pull, "group": "nobody"}])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].group"
    assert "'nobody' is not a consumer group" in field_error(detail)[1]
    status, detail = refused(api, [{**pull, "group": "monitor"}])
    assert status == 422 and "only lossless" in field_error(detail)[1]
    status, detail = refused(api, [pull, {**pull, "name": "q"}])
    assert status == 422 and field_error(detail) == (
        "worker_pools[1].group",
        "group 'workers' has a pool already (one pool per group)",
    )
    status, detail = refused(api, [{**pull, "kind": "rm-rf"}])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].kind" and "xtal" in field_error(detail)[1]
    status, detail = refused(api, [{**pull, "options": {"shell": "sh"}}])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].options.shell"
    status, detail = refused(api, [{**pull, "options": {"credit": "--exec=sh"}}])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].options.credit"
    xtal = {"name": "x", "group": "workers", "kind": "xtal"}
    status, detail = refused(api, [xtal])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].options.results"
    status, detail = refused(api, [{**xtal, "options": {"results": "tcp://merger:5700 -oX"}}])
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].options.results"
    status, detail = refused(api, [{**pull, "max_workers": 17}])
    assert status == 422 and "max_pool_workers_per_request 16" in field_error(detail)[1]
    status, detail = refused(api, [{**pull, "min_workers": 3, "max_workers": 2}])
    assert status == 422 and "min_workers (3) exceeds max_workers (2)" in json.dumps(detail)
    status, detail = refused(api, [{**pull, "command": ["sh", "-c", "id"]}])  # no command: only kinds
    assert status == 422 and field_error(detail)[0] == "worker_pools[0].command"
    status, detail = refused(api, [pull], runs=[1, 2])
    assert status == 422 and field_error(detail)[0] == "worker_pools"
    assert api.services().streams.find(owner="alice").total == 0

    kinds = api.client(cert="alice").get("/v1/worker-kinds").json()
    assert {"pull", "xtal", "tof"} <= {kind["name"] for kind in kinds}
    assert all("command" not in kind for kind in kinds)  # what runs is the service's business


def test_pool_quotas_and_role_restricted_kinds(pki: Pki, tmp_path: Path) -> None:
    restricted = {"command": ["{photonstream}", "consume", "{endpoint}", "{stream}"], "roles": ["operator"]}
    harness = ApiHarness(DatabaseSpec("sqlite", tmp_path), pki, tmp_path / "state", max_pool_workers_per_user=5,
                         worker_kinds={"operators-only": restricted, "tof": None})  # fmt: skip
    try:
        status, detail = refused(harness, [{"name": "p", "group": "workers", "kind": "operators-only"}])
        assert status == 403 and "worker kind 'operators-only' is for the roles operator" in detail
        status, detail = refused(harness, [{"name": "p", "group": "workers", "kind": "tof"}])
        assert status == 422 and "'tof' is not a worker kind" in field_error(detail)[1]  # removed by the settings

        pool = {"name": "p", "group": "workers", "kind": "pull", "max_workers": 3}
        status, _ = refused(harness, [pool])
        assert status == 201
        status, detail = refused(harness, [pool])
        assert status == 429 and "max_pool_workers_per_user" in detail and "up to 3 workers" in detail
        status, _ = refused(harness, [{**pool, "max_workers": 2}])
        assert status == 201  # 3 + 2 = 5, the limit
        status, _ = refused(harness, [])
        assert status == 201  # no pools: no pool workers
    finally:
        harness.close()


@pytest.mark.slurm
def test_a_pool_on_slurm_starts_its_workers_as_one_array_and_processes_every_frame_once(
    slurm_cluster: None, pki: Pki, tmp_path: Path
) -> None:
    harness = make_api(pki, tmp_path, job_backend="slurm", job_backends=["slurm", "local"])
    try:
        events = 40
        stream_id = create(harness, events, 10.0, min_workers=2, max_workers=2, stop_grace_s=20.0)
        alice = harness.client(cert="alice")

        def running() -> bool:
            state = alice.get(f"/v1/streams/{stream_id}").json()["state"]
            pool_state = pools_of(harness, stream_id)["pools"][0]["state"]
            return state not in ("completed", "failed") or pool_state != "stopped"

        step_while(harness, running, "the stream and its pool to end on Slurm", timeout=180)
        shown = alice.get(f"/v1/streams/{stream_id}").json()
        assert (shown["state"], shown["job_backend"]) == ("completed", "slurm"), shown["reason"]
        history = pools_of(harness, stream_id)["events"]
        started = [event["jobs"] for event in history if event["action"] == "start-worker"]
        assert len(started) == 1 and len(started[0]) == 2  # the two workers: one array job, two tasks
        array_id = started[0][0].split("_")[0]
        assert array_id.isdigit() and started[0] == [f"{array_id}_0", f"{array_id}_1"]
        jobs = {job for event in history for job in event["jobs"]}
        backend = harness.services().backends.get("slurm")
        assert all(backend.status(job).state.finished for job in jobs)
        processed, _ = read_processed(tmp_path / "out")
        assert sorted(processed) == list(range(events))
    finally:
        close_api(harness)


@pytest.mark.slurm
def test_a_restarted_api_cancels_the_array_tasks_a_killed_one_left_on_slurm(
    slurm_cluster: None, pki: Pki, tmp_path: Path
) -> None:
    harness = make_api(pki, tmp_path, job_backend="slurm", job_backends=["slurm", "local"])
    old_tasks: list[str] = []
    try:
        stream_id = create(harness, 100_000, 5.0, min_workers=2, max_workers=2)
        step_until(harness, stream_id, {"streaming"})
        manager = harness.services().launcher.pools
        step_while(harness, lambda: len(manager.live_workers(stream_id).get("slow", [])) < 2, "the two workers")
        old_tasks = manager.live_workers(stream_id)["slow"]
        array_id = old_tasks[0].split("_")[0]
        assert sorted(old_tasks) == [f"{array_id}_0", f"{array_id}_1"]  # one array, two tasks
        manager.halt_without_cancelling()  # the API process dies; its workers run on in Slurm
        old_backend = harness.services().backends.get("slurm")
        assert not any(old_backend.status(task).state.finished for task in old_tasks)

        harness.app = harness.new_app()  # a new API on the same database, state and buffer
        restarted = harness.services()
        restarted.launcher.pools.link = restarted.launcher.link
        restarted.launcher.link.start()
        try:

            def no_leftover_event() -> bool:
                return not any("earlier API process" in e["detail"] for e in pools_of(harness, stream_id)["events"])

            step_while(harness, no_leftover_event, "the leftover tasks to be cancelled", 60)
            events = pools_of(harness, stream_id)["events"]
            leftover = next(event for event in events if "earlier API process" in event["detail"])
            assert leftover["action"] == "stopped" and sorted(leftover["jobs"]) == sorted(old_tasks)
            backend = restarted.backends.get("slurm")
            assert [backend.status(task).state for task in old_tasks] == [JobState.CANCELLED] * 2
            harness.client(cert="alice").delete(f"/v1/streams/{stream_id}")
        finally:
            restarted.launcher.stop()
            restarted.launcher.link.stop()
    finally:
        for task in old_tasks:
            subprocess.run(["scancel", task], check=False)
        close_api(harness)
