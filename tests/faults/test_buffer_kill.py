"""kill -9 of the buffer service with a durable stream, while a live pipeline writes and two groups read.

Extends tests/buffer/test_durable.py (in-process producer, one consumer): here the producer is a real
``photonstream run`` and the readers are worker processes in two lossless groups. The buffer is killed mid-stream
and started again on the same port and data directory. What the user sees: the pipeline and the workers pause
(the pipeline resends what was not acked, the workers rejoin), then carry on; each group's application gets every
frame exactly once and the stream ends completed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.buffer.support import ServiceProcess, free_port, group_state
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

STREAM = "faults/4/det"
EVENTS = 100


def test_kill9_of_the_buffer_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    args = ("--segment-mb", "0.25", "--member-timeout-s", "2")
    service = ServiceProcess(data, port, *args)
    config = pipeline_yaml(tmp_path / "p.yaml", service.endpoint, run=4, events=EVENTS, rate_hz=40.0, durable=True,
                           send_timeout_s=30)  # fmt: skip
    outs = {group: tmp_path / f"{group}.jsonl" for group in ("workers", "archive")}
    workers = [
        start_worker(service.endpoint, STREAM, out, "--group", group, "--credit", "8", "--timeout-s", "30")
        for group, out in outs.items()
    ]
    pipeline = start_pipeline(config)
    try:
        wait_for(lambda: frames_done(outs["workers"]) >= EVENTS // 3, 30, "a third of the stream")
        service.kill9()
        service = ServiceProcess(data, port, *args)  # same port, same data directory
        produced = finish(pipeline, "the pipeline", 40)
        assert produced.rc == 0, produced.err
        for process, out in zip(workers, outs.values(), strict=True):
            worked = finish(process, f"worker {out.name}", 40)
            assert worked.rc == 0, worked.err
        groups = {g: group_state(service.endpoint, g, STREAM) for g in outs}
    finally:
        for process in (pipeline, *workers):
            if process.poll() is None:
                process.kill()
        service.stop()
    end = produced.end_message()
    for group, out in outs.items():
        counts = tally(EVENTS, out)
        report(f"buffer_kill9[{group}]", lost=counts.lost, duplicates=counts.duplicates,
               end=summary_of(out)["end_reason"], rejoins=summary_of(out)["rejoins"])  # fmt: skip
        assert counts.numbers() == (0, 0), group  # frames lost, duplicates seen by the application
        summary = summary_of(out)
        assert summary["end_reason"] == "completed", group
        assert summary["rejoins"] >= 1, group  # the worker noticed the restart and rejoined
        assert groups[group]["ended"] and groups[group]["committed"] == EVENTS, group
    assert end.get("reason") == "completed" and end.get("events_sent") == EVENTS
