"""Elastic worker pools: decisions from a scripted lag with real local and Slurm jobs, and a live run against a real
buffer where a slow worker pool grows, shrinks and finishes every frame exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from photonstream.buffer.cli import fetch_stats
from photonstream.config.pipeline import validate_pipeline
from photonstream.jobs.base import JobBackend, JobState
from photonstream.jobs.elastic import BufferLagReader, ElasticPool, LagReading, WorkerPool, reading_from_stats
from photonstream.jobs.local import LocalBackend
from photonstream.pipeline import run_pipeline
from tests.buffer.support import Producer, start_service
from tests.jobs.conftest import process_alive, wait_until

WORKER = Path(__file__).with_name("elastic_worker.py")
PATIENCE_S = 20


class ScriptedLag:
    """A lag reader that answers what the test set last."""

    def __init__(self) -> None:
        self.reading: LagReading | None = None

    def set(self, lag: int, members: int = 0, **flags: bool) -> None:
        self.reading = LagReading(lag=lag, members=members, **flags)

    def __call__(self) -> LagReading | None:
        return self.reading


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def sleeper_pool(pid_dir: Path, **bounds: float) -> WorkerPool:
    """Workers that write their PID to ``<pid_dir>/<worker>.pid`` and sleep."""
    settings = {
        "min_workers": 1,
        "max_workers": 3,
        "target_lag": 10,
        "scale_down_below": 0.25,
        "scale_up_cooldown_s": 5.0,
        "scale_down_cooldown_s": 10.0,
        "max_step": 2,
        "max_failures": 1,
        "stop_grace_s": 5.0,
        **bounds,
    }
    command = ["sh", "-c", f"echo $$ > {pid_dir}/{{worker}}.pid.tmp && mv {pid_dir}/{{worker}}.pid.tmp "
               f"{pid_dir}/{{worker}}.pid && exec sleep 300"]  # fmt: skip
    return WorkerPool(name="sleepers", group="workers", command=command, **settings)


def worker_pids(pool: ElasticPool, pid_dir: Path, patience_s: float) -> dict[str, int]:
    """The PID of each live worker of the pool (waiting for the ones that have not started yet)."""
    names = [worker.name for worker in pool.workers]
    wait_until(lambda: all((pid_dir / f"{name}.pid").exists() for name in names), patience_s, f"PID files of {names}")
    return {name: int((pid_dir / f"{name}.pid").read_text()) for name in names}


def wait_gone(pid: int, patience_s: float) -> None:
    wait_until(lambda: not process_alive(pid), patience_s, f"process {pid} to end")


def actions(pool: ElasticPool) -> list[str]:
    return [event.action for event in pool.events()]


def scripted_decisions(backend: JobBackend, tmp_path: Path, patience_s: float, max_workers: int) -> None:
    """The same scripted lag sequence, through any backend: min, proportional step, max, newest-first removal,
    replacement of a failed worker, and the stop after the stream drained."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    lag, clock = ScriptedLag(), Clock()
    pool = ElasticPool(
        sleeper_pool(pid_dir, max_workers=max_workers),
        backend,
        lag,
        endpoint="tcp://127.0.0.1:1",
        stream="exp/1/det",
        workdir=tmp_path / "work",
        clock=clock,
    )
    try:
        # no lag known yet: the minimum starts anyway
        pool.tick()
        assert actions(pool) == ["lag-unknown", "start-worker"]
        first = worker_pids(pool, pid_dir, patience_s)
        assert len(first) == 1

        # above target, but not for the cooldown yet: nothing
        clock.now, _ = 1.0, lag.set(50, members=1)
        pool.tick()
        assert len(pool.workers) == 1
        # above target for 5 s: proportional step ceil(1 * (50/10 - 1)) = 4, capped by max_step 2 and max_workers
        clock.now = 6.0
        pool.tick()
        assert pool.events()[-1].action == "scale-up"
        assert pool.events()[-1].workers == min(3, max_workers)
        pids = worker_pids(pool, pid_dir, patience_s)
        assert len(pids) == min(3, max_workers) and all(process_alive(pid) for pid in pids.values())

        # far above target for long: max_workers holds
        clock.now, _ = 20.0, lag.set(500, members=len(pids))
        pool.tick()
        clock.now = 30.0
        pool.tick()
        if max_workers > 3:
            assert pool.events()[-1].action == "scale-up"
        pids = worker_pids(pool, pid_dir, patience_s)
        assert len(pool.workers) == max_workers

        # well below target (< 2.5) for the down cooldown: the newest worker goes, one at a time
        clock.now, _ = 31.0, lag.set(1, members=max_workers)
        pool.tick()
        clock.now = 40.0
        pool.tick()
        assert len(pool.workers) == max_workers
        newest = pool.workers[-1].name
        clock.now = 41.0
        pool.tick()
        assert pool.events()[-1].action == "scale-down"
        assert [w.name for w in pool.workers] == [name for name in pids if name != newest]
        wait_gone(pids[newest], patience_s)
        clock.now = 45.0  # less than the cooldown since the last removal
        pool.tick()
        assert len(pool.workers) == max_workers - 1
        for step in range(max_workers):  # down to min_workers, and no further
            clock.now = 51.0 + 10.0 * step
            pool.tick()
        assert len(pool.workers) == 1
        assert actions(pool).count("scale-down") == max_workers - 1
        survivor = pool.workers[0].name
        assert survivor == next(iter(pids))  # the oldest stays
        for name, pid in pids.items():
            if name != survivor:
                wait_gone(pid, patience_s)
        assert process_alive(pids[survivor])

        # the last worker dies: replaced at once
        os.kill(pids[survivor], signal.SIGKILL)
        wait_until(lambda: backend.status(pool.workers[0].job_id).state.finished, patience_s, "the kill to show")
        clock.now = 100.0
        pool.tick()
        replaced = pool.events()[-1]
        assert replaced.action == "replace" and survivor in replaced.detail
        assert len(pool.workers) == 1 and pool.workers[0].name != survivor
        replacement = worker_pids(pool, pid_dir, patience_s)[pool.workers[0].name]
        assert process_alive(replacement)

        # the stream ended and the group drained: the workers get the grace, then are stopped
        clock.now, _ = 110.0, lag.set(0, members=1, stream_ended=True, drained=True)
        pool.tick()
        assert pool.events()[-1].action == "stream-drained"
        assert process_alive(replacement)
        clock.now = 116.0
        pool.tick()
        assert pool.events()[-1].action == "stopped"
        assert pool.done and pool.workers == []
        wait_gone(replacement, patience_s)
        assert pool.tick() == []
    finally:
        pool.stop()


def test_scripted_lag_drives_local_workers(tmp_path: Path) -> None:
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=8, cancel_grace_s=1.0, poll_interval_s=0.05)
    try:
        scripted_decisions(backend, tmp_path, PATIENCE_S, max_workers=4)
    finally:
        backend.close()


@pytest.mark.slurm
def test_scripted_lag_drives_slurm_workers(slurm_cluster: None, tmp_path: Path) -> None:
    from photonstream.jobs.slurm import SlurmBackend

    # the test cluster has two cores: two one-core workers at most
    scripted_decisions(SlurmBackend(state_dir=tmp_path / "state"), tmp_path, 30, max_workers=2)


def test_new_workers_get_time_to_join_before_more_are_added(tmp_path: Path) -> None:
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=4, cancel_grace_s=1.0, poll_interval_s=0.05)
    pool_spec = sleeper_pool(tmp_path, max_workers=4, scale_up_cooldown_s=0.0, max_step=1, join_timeout_s=10.0)
    lag, clock = ScriptedLag(), Clock()
    pool = ElasticPool(pool_spec, backend, lag, endpoint="e", stream="x/1/y", workdir=tmp_path, clock=clock)
    try:
        lag.set(100, members=0)
        pool.tick()
        assert len(pool.workers) == 1  # the minimum; it has not joined yet, so no more
        clock.now, _ = 1.0, lag.set(100, members=1)
        pool.tick()
        assert len(pool.workers) == 2
        clock.now = 5.0  # the second has not joined: wait for it ...
        pool.tick()
        assert len(pool.workers) == 2
        clock.now = 11.0  # ... but not longer than join_timeout_s
        pool.tick()
        assert len(pool.workers) == 3
        assert actions(pool) == ["start-worker", "scale-up", "scale-up"]
    finally:
        pool.stop()
        backend.close()


def test_failures_beyond_the_limit_stop_replacements(tmp_path: Path) -> None:
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=4, poll_interval_s=0.05)
    pool_spec = WorkerPool(name="broken", group="g", command=["sh", "-c", "exit 3"], min_workers=1, max_failures=2)
    lag, clock = ScriptedLag(), Clock()
    lag.set(0, members=0)
    pool = ElasticPool(pool_spec, backend, lag, endpoint="e", stream="x/1/y", workdir=tmp_path, clock=clock)
    try:
        for step in range(6):
            clock.now = float(step)
            pool.tick()
            if pool.workers:
                job_id = pool.workers[0].job_id
                wait_until(lambda job_id=job_id: backend.status(job_id).state.finished, PATIENCE_S, "exit 3")
        assert actions(pool) == ["start-worker", "replace", "replace", "give-up"]
        assert "exit code 3" in pool.events()[1].detail
        assert pool.workers == []
    finally:
        pool.stop()
        backend.close()


def test_workers_that_ended_on_their_own_are_not_restarted_on_a_reading_older_than_their_end(tmp_path: Path) -> None:
    """Workers leave (exit 0) when the buffer ends the stream for their group; a lag reading taken before their last
    acks (the embedded buffer's stats are up to a second old) still shows work left. Within ``reading_max_age_s``
    of their end the pool does not start new ones for the minimum; after it, a reading that still shows work does."""
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=4, poll_interval_s=0.05)
    pool_spec = WorkerPool(name="leavers", group="g", command=["sh", "-c", "exit 0"], min_workers=2, max_workers=2)
    lag, clock = ScriptedLag(), Clock()
    lag.set(1, members=2, stream_ended=True)  # stale: the workers have since acked the last message
    pool = ElasticPool(pool_spec, backend, lag, endpoint="e", stream="x/1/y", workdir=tmp_path, clock=clock,
                       reading_max_age_s=2.0)  # fmt: skip
    try:
        pool.tick()
        for worker in list(pool.workers):
            wait_until(lambda job=worker.job_id: backend.status(job).state.finished, PATIENCE_S, "the workers' exit")
        clock.now = 1.0
        pool.tick()  # both ended: no new workers on the old reading
        clock.now = 2.5
        pool.tick()
        assert pool.workers == [] and actions(pool) == ["start-worker", "worker-ended", "worker-ended"]
        clock.now = 3.5  # a reading newer than their end still shows work: the minimum again
        pool.tick()
        assert len(pool.workers) == 2 and actions(pool)[-1] == "start-worker"
        lag.set(0, members=0, stream_ended=True, drained=True)
        for worker in list(pool.workers):
            wait_until(lambda job=worker.job_id: backend.status(job).state.finished, PATIENCE_S, "the workers' exit")
        pool.tick()
        assert pool.done and actions(pool)[-1] == "stopped"
    finally:
        pool.stop()
        backend.close()


def test_pool_spec_refuses_what_cannot_run() -> None:
    with pytest.raises(ValueError, match="unknown placeholder"):
        WorkerPool(name="p", group="g", command=["worker", "--out={outdir}"])
    with pytest.raises(ValueError, match="min_workers"):
        WorkerPool(name="p", group="g", command=["w"], min_workers=5, max_workers=2)
    pool = WorkerPool(name="p", group="g", command=["w", "{endpoint}", "{stream}", "--id={worker}", "{{literal}}"])
    assert pool.argv(endpoint="tcp://b:1", stream="e/1/d", group="g", pool="p", worker="s-p-0", index=0) == [
        "w",
        "tcp://b:1",
        "e/1/d",
        "--id=s-p-0",
        "{literal}",
    ]


def test_reading_from_buffer_stats() -> None:
    stats = {
        "streams": {
            "e/1/d": {"ended": True, "groups": {"g": {"lag": 0, "members": 2, "ended": True}}},
            "e/2/d": {"ended": False, "groups": {"g": {"lag": 7, "members": 1, "ended": False}}},
        }
    }
    assert reading_from_stats(stats, "e/1/d", "g") == LagReading(0, 2, stream_ended=True, drained=True)
    assert reading_from_stats(stats, "e/2/d", "g") == LagReading(7, 1, stream_ended=False, drained=False)
    assert reading_from_stats(stats, "e/2/d", "other") is None
    assert reading_from_stats(stats, "e/3/d", "g") is None


# --- a real buffer: removal without loss, then a live pool under a real pipeline -------------------------------


@pytest.fixture
def live_backend(tmp_path: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(state_dir=tmp_path / "state", max_concurrent=8, cancel_grace_s=3.0, poll_interval_s=0.05)
    yield backend
    backend.close()


def read_processed(out: Path) -> tuple[list[int], list[str]]:
    """(events the workers finished, how each worker that wrote a summary left)."""
    processed: list[int] = []
    left: list[str] = []
    for path in out.glob("*.jsonl"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record.get("summary"):
                left.append(record["left"])
            else:
                processed.append(record["event"])
    return processed, left


def group_stats(endpoint: str, stream: str, group: str) -> dict:
    """The buffer's stats of one group ({} before the group exists)."""
    return fetch_stats(endpoint)["streams"].get(stream, {}).get("groups", {}).get(group, {})


@pytest.mark.parametrize("leaving", ["graceful", "abrupt"])
def test_removing_a_worker_that_holds_frames_loses_none(
    leaving: str, live_backend: LocalBackend, tmp_path: Path
) -> None:
    """The pool removes a worker while it holds unacked frames (one in hand, more sent ahead): the buffer gives
    them to the other worker. graceful: the worker finishes its frame and leaves (BYE), every frame is processed
    once. abrupt: SIGTERM kills it at once; the buffer redelivers once it notices, still nothing is lost."""
    events, stream, out = 40, "elastic/2/det", tmp_path / "out"
    service = start_service(member_timeout_s=2.0)
    command = [sys.executable, str(WORKER), "{endpoint}", "{stream}", "{group}", str(out), "{worker}",
               "--work-s", "0.05", "--credit", "4", *(["--abrupt"] if leaving == "abrupt" else [])]  # fmt: skip
    pool_spec = WorkerPool(
        name="pair", group="workers", command=command, min_workers=1, max_workers=2, target_lag=5,
        scale_up_cooldown_s=0.0, scale_down_cooldown_s=0.0, stop_grace_s=10.0,
    )  # fmt: skip
    lag = ScriptedLag()
    pool = ElasticPool(pool_spec, live_backend, lag, endpoint=service.endpoint, stream=stream, workdir=tmp_path)
    producer = Producer(service.endpoint, stream)
    try:
        producer.start()
        producer.frames(events)
        lag.set(events, members=0)
        pool.tick()  # the minimum
        lag.set(events, members=1)
        pool.tick()  # lag far above target: one more
        assert len(pool.workers) == 2

        def both_hold_frames() -> bool:
            group = group_stats(service.endpoint, stream, "workers")
            return group.get("members") == 2 and all(n >= 2 for n in group["member_inflight"].values())

        wait_until(both_hold_frames, PATIENCE_S, "both workers to hold frames")
        lag.set(0, members=2)
        pool.tick()
        assert pool.events()[-1].action == "scale-down" and len(pool.workers) == 1
        producer.end()
        wait_until(
            lambda: group_stats(service.endpoint, stream, "workers").get("ended"), PATIENCE_S, "the group to drain"
        )
        group = group_stats(service.endpoint, stream, "workers")
        lag.set(0, members=1, stream_ended=True, drained=True)
        pool.tick()
        wait_until(lambda: pool.tick() is not None and pool.done, PATIENCE_S, "the workers to end and the pool to stop")
        assert pool.done and pool.events()[-1].action == "stopped"
    finally:
        pool.stop()
        producer.close()
        service.stop()

    processed, left = read_processed(out)
    assert group["redelivered"] >= 1  # what the removed worker held went back to the group
    if leaving == "graceful":
        assert sorted(processed) == list(range(events)), "a frame was lost or processed twice"
        assert sorted(left) == ["end", "sigterm"]
    else:
        assert set(processed) == set(range(events)), "a frame was lost"
        assert len(processed) - events <= 1  # at most a frame finished but not yet acked when it was killed
        assert left == ["end"]


def produce(endpoint: str, events: int, rate_hz: float) -> None:
    config = validate_pipeline(
        {
            "stream": {"experiment": "elastic", "run": 1, "stream_id": "det"},
            "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [8, 8], "events": events,
                       "rate_hz": rate_hz, "seed": 1},
            "handlers": [{"type": "buffer", "address": endpoint, "send_timeout_s": 20.0, "resend_s": 0.3}],
        }
    )  # fmt: skip
    run_pipeline(config)


def test_live_pool_follows_the_lag_and_every_frame_is_processed_once(
    live_backend: LocalBackend, tmp_path: Path
) -> None:
    """A pipeline sends faster than one worker can keep up: the pool grows toward max_workers, the lag falls, the
    pool shrinks again mid-stream, and after the end every frame was processed exactly once and no worker runs."""
    events, rate_hz, work_s = 250, 25.0, 0.1  # one worker does < 10 frames/s; the producer sends 25
    service = start_service(member_timeout_s=3.0)
    stream, out = "elastic/1/det", tmp_path / "out"
    pool_spec = WorkerPool(
        name="slow",
        group="workers",
        command=[sys.executable, str(WORKER), "{endpoint}", "{stream}", "{group}", str(out), "{worker}",
                 "--work-s", str(work_s)],
        min_workers=1,
        max_workers=4,
        target_lag=10,
        scale_down_below=0.5,
        scale_up_cooldown_s=0.5,
        scale_down_cooldown_s=1.0,
        max_step=3,
        stop_grace_s=10.0,
        interval_s=0.2,
    )  # fmt: skip
    lag_reader = BufferLagReader(service.endpoint, stream, "workers")
    pool = ElasticPool(
        pool_spec, live_backend, lag_reader, endpoint=service.endpoint, stream=stream, workdir=tmp_path / "work"
    )
    stop = threading.Event()
    runner = threading.Thread(target=pool.run, args=(stop,), daemon=True)
    runner.start()
    try:
        wait_until(lambda: (lag_reader() or LagReading(0, 0)).members == 1, PATIENCE_S, "the first worker to join")
        produce(service.endpoint, events, rate_hz)
        produced = pool.events()
        runner.join(timeout=40)
        assert not runner.is_alive(), f"the pool did not stop: {[e.to_dict() for e in pool.events()[-5:]]}"
    finally:
        stop.set()
        runner.join(timeout=10)
        service.stop()

    history = pool.events()
    during_stream = [event.action for event in produced]
    assert "scale-up" in during_stream, during_stream
    assert "scale-down" in during_stream, f"no worker was removed while the stream ran: {during_stream}"
    assert max(event.workers for event in history) > 1
    assert all(event.workers <= pool_spec.max_workers for event in history)
    first_down = next(i for i, event in enumerate(produced) if event.action == "scale-down")
    assert max(event.lag or 0 for event in produced[:first_down]) > pool_spec.target_lag  # the lag rose ...
    assert (produced[first_down].lag or 0) < pool_spec.target_lag * pool_spec.scale_down_below  # ... and fell
    assert history[-1].action == "stopped" and history[-1].lag == 0

    processed, left = read_processed(out)
    assert sorted(processed) == list(range(events)), "a frame was lost or processed twice"
    assert "sigterm" in left  # workers removed mid-stream left after finishing their frame ...
    assert "end" in left  # ... the others finished the stream
    assert len(left) == len(list(out.glob("*.jsonl")))
    job_ids = pool.job_ids(live_only=False)
    assert len(job_ids) == len(list(out.glob("*.jsonl")))
    assert job_ids and all(live_backend.status(job_id).state.finished for job_id in job_ids)
    assert {live_backend.status(job_id).state for job_id in job_ids} <= {JobState.COMPLETED, JobState.CANCELLED}
    print(json.dumps(_figures(history, events, rate_hz, work_s)))


def _figures(history: list, events: int, rate_hz: float, work_s: float) -> dict[str, object]:
    """How fast the pool reacted (for the report; not asserted)."""
    first_up = next(e for e in history if e.action == "scale-up")
    start = history[0].time
    return {
        "frames": events,
        "producer_hz": rate_hz,
        "worker_hz": round(1 / work_s, 1),
        "first_scale_up_after_s": round(first_up.time - start, 2),
        "peak_workers": max(e.workers for e in history),
        "peak_lag": max(e.lag or 0 for e in history),
        "decisions": [(round(e.time - start, 2), e.action, e.workers, e.lag, e.members) for e in history],
    }


# --- Slurm: a batch of new workers is one array job, each task a worker of its own -------------------------------


def recording_sbatch(tmp_path: Path) -> tuple[Path, Path]:
    """An ``sbatch`` that keeps every script it is handed (``<scripts>/*.sh``) and hands it on to the real one."""
    scripts = tmp_path / "sbatch-scripts"
    scripts.mkdir()
    wrapper = tmp_path / "sbatch"
    wrapper.write_text(
        f'#!/bin/sh\nscript=$(mktemp {scripts}/XXXXXX.sh)\ncat > "$script"\nexec sbatch "$@" < "$script"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, scripts


def squeue_state(job_id: str) -> str:
    result = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


@pytest.mark.slurm
def test_a_slurm_pool_scales_up_by_one_array_and_down_by_one_task(slurm_cluster: None, tmp_path: Path) -> None:
    """Scaling up by 2 is one sbatch --array=0-1; both tasks consume (every frame once in the lossless group);
    scaling down cancels exactly one task while Slurm runs the other on."""
    from photonstream.jobs.slurm import SlurmBackend

    wrapper, scripts = recording_sbatch(tmp_path)
    backend = SlurmBackend(state_dir=tmp_path / "state", sbatch=str(wrapper))
    events, stream, out, patience_s = 40, "elastic/3/det", tmp_path / "out", 60
    service = start_service(member_timeout_s=2.0)
    command = [sys.executable, str(WORKER), "{endpoint}", "{stream}", "{group}", str(out), "{worker}",
               "--work-s", "0.1", "--credit", "4"]  # fmt: skip
    pool_spec = WorkerPool(
        name="arr", group="workers", command=command, min_workers=1, max_workers=3, target_lag=5, max_step=2,
        scale_up_cooldown_s=0.0, scale_down_cooldown_s=0.0, stop_grace_s=20.0,
    )  # fmt: skip
    lag = ScriptedLag()
    pool = ElasticPool(pool_spec, backend, lag, endpoint=service.endpoint, stream=stream, workdir=tmp_path / "work")
    producer = Producer(service.endpoint, stream)
    try:
        producer.start()
        pool.tick()  # the minimum: one worker, a plain job
        first = pool.workers[0]
        wait_until(lambda: backend.status(first.job_id).state == JobState.RUNNING, patience_s, "the first worker")
        wait_until(lambda: group_stats(service.endpoint, stream, "workers").get("members") == 1, patience_s, "a join")
        lag.set(50, members=1)
        pool.tick()  # ceil(1 * (50/5 - 1)) = 9, capped by max_step: 2 more
        scale_up = pool.events()[-1]
        assert scale_up.action == "scale-up" and len(scale_up.jobs) == 2
        array_id = scale_up.jobs[0].split("_")[0]
        assert scale_up.jobs == (f"{array_id}_0", f"{array_id}_1")
        submitted = sorted(scripts.glob("*.sh"), key=lambda path: path.stat().st_mtime)
        assert len(submitted) == 2  # the first worker, then ONE submission for both new ones
        assert "#SBATCH --array" not in submitted[0].read_text()
        assert "#SBATCH --array=0-1\n" in submitted[1].read_text()

        # the test cluster has two cores: the first worker makes room for the array's second task
        backend.cancel(first.job_id)
        pool.tick()
        assert pool.events()[-1].action == "worker-ended"
        tasks = list(pool.workers)
        assert [worker.job_id for worker in tasks] == list(scale_up.jobs)
        wait_until(lambda: group_stats(service.endpoint, stream, "workers").get("members") == 2, patience_s, "2 joins")
        lag.set(3, members=2)  # inside the band: no decision
        producer.frames(events)

        def both_hold_frames() -> bool:
            group = group_stats(service.endpoint, stream, "workers")
            return group.get("members") == 2 and all(n >= 2 for n in group["member_inflight"].values())

        wait_until(both_hold_frames, patience_s, "both tasks to hold frames")
        lag.set(0, members=2)
        pool.tick()
        scale_down = pool.events()[-1]
        assert scale_down.action == "scale-down" and scale_down.jobs == (tasks[1].job_id,)
        assert backend.status(tasks[1].job_id).state == JobState.CANCELLED
        assert backend.status(tasks[0].job_id).state == JobState.RUNNING
        assert squeue_state(tasks[0].job_id) == "RUNNING"  # Slurm itself: the other task runs on
        assert pool.workers == [tasks[0]]

        producer.end()
        wait_until(lambda: group_stats(service.endpoint, stream, "workers").get("ended"), patience_s, "the drain")
        lag.set(0, members=1, stream_ended=True, drained=True)
        wait_until(lambda: pool.tick() is not None and pool.done, patience_s, "the last task to end")
        assert pool.events()[-1].action == "stopped"
        assert backend.status(tasks[0].job_id).state == JobState.COMPLETED
    finally:
        pool.stop()
        producer.close()
        service.stop()

    processed, left = read_processed(out)
    assert sorted(processed) == list(range(events)), "a frame was lost or processed twice"
    for task, how in zip(tasks, ["end", "sigterm"], strict=True):  # both tasks consumed; the removed one left
        records = [json.loads(line) for line in (out / f"{task.name}.jsonl").read_text().splitlines()]
        assert any("event" in record for record in records), f"{task.name} ({task.job_id}) processed no frame"
        assert records[-1] == {"summary": True, "left": how, "frames": len(records) - 1}
    assert sorted(left) == ["end", "sigterm", "sigterm"]  # the first worker left (cancelled) before any frame
