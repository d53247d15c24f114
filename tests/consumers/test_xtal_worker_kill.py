"""Killing one crystallography worker mid-run loses no frames: its unacked frames are redelivered to the other
worker, the merger counts every event exactly once (a result that arrives twice counts once) and finishes without
the dead worker's end record."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
import zmq

from photonstream.consumers.xtal._wire import pack
from photonstream.consumers.xtal.local import LocalRun, WorkerKill, run_local
from photonstream.consumers.xtal.merge import MergeOutcome, Merger, run_merger
from tests.consumers.test_xtal import DETECTOR, RUN_SEED

EVENTS = 240
KILLED, SURVIVOR = "worker-1", "worker-0"
KILL_AFTER = 30  # results of the killed worker the merger has counted before the kill


def result(event: int, worker: str) -> dict[str, object]:
    return {"type": "result", "event": event, "worker": worker, "hit": True, "true_hit": True, "indexed": False}


def test_merger_counts_a_redelivered_frame_once() -> None:
    merger = Merger()
    assert merger.add(result(0, "a"))
    assert merger.add(result(1, "a"))
    assert not merger.add(result(1, "b"))  # the same event again, from the worker it was redelivered to
    report = merger.report()
    assert report["frames"] == 2 and report["duplicates"] == 1
    assert report["by_worker"] == {"a": 2}
    assert report["true_hits"] == 2 and report["hit_recall"] == 1.0


def test_merger_finishes_without_a_dead_workers_end_record() -> None:
    """Two workers start; one dies (no end record). Once every event has a result and the survivor's end record
    gave the stream's event count, the merger finishes after ``settle_s`` instead of waiting for the dead one."""
    endpoint = "inproc://xtal-merger-settle"
    outcome: list[MergeOutcome] = []
    merging = threading.Thread(
        target=lambda: outcome.append(run_merger(endpoint, workers=2, idle_timeout_s=30, settle_s=0.2))
    )
    merging.start()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(endpoint)  # inproc allows connecting before the merger binds
    try:
        start = {"type": "start", "unit_cell": [79.1, 79.1, 37.9, 90, 90, 90], "space_group": "P43212"}
        records = [{**start, "worker": "a", "wavelength_a": 1.3}, {**start, "worker": "b", "wavelength_a": 1.3}]
        records += [result(0, "b"), result(1, "a"), result(1, "b"), result(2, "a"), result(3, "a")]
        stream_end = {"reason": "completed", "events_sent": 4}
        records.append({"type": "end", "worker": "a", "stream_end": stream_end, "error": ""})
        for record in records:
            push.send(pack(record))
        merging.join(20)
    finally:
        push.close()
    assert not merging.is_alive() and outcome, "the merger kept waiting for the dead worker"
    done = outcome[0]
    assert done.report["frames"] == 4 and done.report["duplicates"] == 1
    assert done.report["by_worker"] == {"b": 1, "a": 3}
    assert list(done.workers) == ["a"] and done.workers_missing == ["b"]


# -- the real thing: a buffer, two worker processes, the merger ----------------------------------------------
@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    for module in ("cctbx", "pyFAI"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    source = {"type": "synthetic-diffraction", **DETECTOR, "events": EVENTS, "hit_fraction": 0.9, "seed": RUN_SEED}
    # prefill: every frame is in the buffer before the workers start, so the killed worker always holds unacked
    # frames (its credit's worth) when it dies.
    return run_local(
        source,
        2,
        tmp_path_factory.mktemp("xtal-kill"),
        report_every=10,
        timeout_s=120,
        prefill=True,
        kill=WorkerKill(worker=1, after_results=KILL_AFTER),
    )


@pytest.mark.slow
def test_killed_workers_frames_are_redelivered_and_every_event_counted_once(killed_run: LocalRun) -> None:
    assert killed_run.killed == [KILLED]
    report = killed_run.document["report"]
    counted = report["by_worker"]
    redelivered, duplicates = killed_run.group["redelivered"], report["duplicates"]
    print(f"\nkilled after {counted[KILLED]} results; redelivered {redelivered}; duplicates {duplicates}")
    assert killed_run.events == EVENTS
    assert report["frames"] == EVENTS  # every event exactly once
    assert set(counted) == {KILLED, SURVIVOR}
    assert KILL_AFTER <= counted[KILLED] < EVENTS // 2  # killed mid-run, after it had sent results
    assert killed_run.group["redelivered"] >= 1  # the frames it held went back to the group
    # The survivor did the rest; any frame it did beyond that was a redelivered one already counted.
    (survivor,) = killed_run.workers
    assert survivor["worker"] == SURVIVOR
    assert counted[SURVIVOR] == EVENTS - counted[KILLED]
    assert survivor["frames"] == counted[SURVIVOR] + report["duplicates"]
    # The merger finished without the dead worker's end record, and says so.
    assert list(killed_run.document["workers"]) == [SURVIVOR]
    assert killed_run.document["workers_missing"] == [KILLED]


@pytest.mark.slow
def test_results_after_a_kill_are_as_good(killed_run: LocalRun) -> None:
    report = killed_run.document["report"]
    assert report["true_hits"] > 0.8 * EVENTS
    assert report["indexing_rate"] >= 0.8, report
    assert report["cc_reference"] >= 0.8, report
    np.testing.assert_allclose(report["cell"]["mean"], [79.1, 79.1, 37.9, 90, 90, 90], rtol=0.003)
    assert killed_run.mtz.exists()
    print(f"\nindexing rate {report['indexing_rate']}, CC {report['cc_reference']}, {killed_run.seconds:.1f} s")
