"""kill -9 of a consumer while a live pipeline streams and the consumer is in the middle of a frame.

Extends tests/client/test_faults.py (a consumer killed after committing, with the stream already stored): here the
producer is a real ``photonstream run`` still streaming, both workers are processes, and the doomed one dies while
its application works on a frame (it has neither finished nor acked it). What the user sees: the survivor slows
down for the member timeout, then gets the dead worker's unacked frames; the group's applications finish every
frame exactly once and the stream ends completed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from photonstream.testing.stream_worker import last_line
from tests.buffer.support import group_state, start_service
from tests.faults.support import (
    finish,
    frames_done,
    pipeline_yaml,
    report,
    start_pipeline,
    start_worker,
    summary_of,
    tally,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

STREAM = "faults/3/det"
EVENTS = 80


def test_kill9_of_a_consumer_mid_frame_loses_and_repeats_nothing(tmp_path: Path) -> None:
    service = start_service(member_timeout_s=1.0, ack_timeout_s=30.0)
    try:
        result = run_scenario(service, tmp_path)
    finally:
        service.stop()
    doomed_last, counts, survivor, group, pipeline_rc = result
    report("consumer_kill9", lost=counts.lost, duplicates=counts.duplicates, redelivered=group["redelivered"],
           end=survivor["end_reason"])  # fmt: skip
    assert "begin" in doomed_last  # it died working on a frame it had not finished
    assert counts.numbers() == (0, 0)  # frames lost, duplicates seen by the applications
    assert counts.within_one == 0
    assert doomed_last["begin"] not in counts.per_worker[0]  # the unfinished frame went to the survivor ...
    assert doomed_last["begin"] in counts.per_worker[1]  # ... which finished it
    assert survivor["end_reason"] == "completed" and survivor["error"] is None
    assert group["redelivered"] >= 1 and group["ended"]
    assert pipeline_rc == 0


def run_scenario(service: Any, tmp_path: Path) -> tuple[dict[str, Any], Any, dict[str, Any], dict[str, Any], int]:
    config = pipeline_yaml(tmp_path / "p.yaml", service.endpoint, run=3, events=EVENTS, rate_hz=40.0)
    doomed_out, survivor_out = tmp_path / "doomed.jsonl", tmp_path / "survivor.jsonl"
    common = ("--group", "workers", "--credit", "4", "--timeout-s", "30", "--heartbeat-s", "0.2")
    doomed = start_worker(service.endpoint, STREAM, doomed_out, *common, "--work-s", "0.4")
    survivor = start_worker(service.endpoint, STREAM, survivor_out, *common)
    pipeline = start_pipeline(config)
    try:
        wait_for(lambda: frames_done(doomed_out) >= 3 and "begin" in last_line(doomed_out), 30, "the doomed worker")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        doomed_last = last_line(doomed_out)
        produced = finish(pipeline, "the pipeline", 30)
        assert produced.rc == 0, produced.err
        worked = finish(survivor, "the surviving worker", 30)
        assert worked.rc == 0, worked.err
    finally:
        for process in (doomed, survivor, pipeline):
            if process.poll() is None:
                process.kill()
    counts = tally(EVENTS, doomed_out, survivor_out)
    return doomed_last, counts, summary_of(survivor_out), group_state(service.endpoint, "workers", STREAM), produced.rc
