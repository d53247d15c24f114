"""A full data disk: the buffer's data directory is a 4 MB tmpfs and a durable stream needs more.

tests/buffer/test_durable.py fakes the full disk with RLIMIT_FSIZE (EFBIG); here the disk really fills (ENOSPC).
What the user sees: ``photonstream run`` fails with the buffer's one-line reason (no space left on device); it
never reports completed. Nothing it was told was stored is missing: a lossless group reads every stored frame,
once, in order, and then an end message ``failed`` with that reason (the buffer ends the stream when it refuses
its producer for good). Mounting needs root; without it the case skips (fails where PHOTONSTREAM_REQUIRE_NETNS=1,
as CI runs privileged).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from photonstream.testing.stream_worker import read_records
from tests.buffer.support import ServiceProcess, free_port, stream_state
from tests.faults.support import (
    Finished,
    Tally,
    finish,
    frames_done,
    pipeline_yaml,
    report,
    start_pipeline,
    start_worker,
    tally,
    wait_for,
)
from tests.helpers import require_privileges

pytestmark = [pytest.mark.faults, pytest.mark.timeout(90)]

STREAM = "faults/5/det"
EVENTS = 300  # 32 KiB frames: about 10 MB, more than the 4 MB disk


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``path``; None, or why it could not be done (one line)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs as the full disk needs root"
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    if result.returncode != 0:
        return f"mount -t tmpfs is not allowed here: {result.stderr.strip() or result.returncode}"
    return None


@dataclass
class Outcome:
    produced: Finished
    stored: int
    counts: Tally
    worker_summary: dict[str, Any] | None  # None: the worker did not finish (no end message reached it)
    blocked: str


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    root = tmp_path_factory.mktemp("disk-full")
    data = root / "data"
    data.mkdir()
    reason = mount_tmpfs(data, "4m")
    require_privileges(reason, "privileged fault cases")
    service = worker = None
    try:
        service = ServiceProcess(data, free_port(), "--segment-mb", "0.5", "--member-timeout-s", "2")
        out = root / "worker.jsonl"
        worker = start_worker(service.endpoint, STREAM, out, "--group", "workers", "--credit", "16", "--timeout-s",
                              "30")  # fmt: skip
        config = pipeline_yaml(root / "p.yaml", service.endpoint, run=5, events=EVENTS, shape=(128, 128),
                               durable=True, send_timeout_s=5)  # fmt: skip
        produced = finish(start_pipeline(config), "the pipeline", 60)
        state = stream_state(service.endpoint, STREAM)
        stored = int(state["head"])
        wait_for(lambda: frames_done(out) >= stored, 20, "the worker to read every stored frame")
        with contextlib.suppress(AssertionError):  # a worker that gets no end message is stopped after 5 s
            finish(worker, "the worker", 5)
        yield Outcome(produced, stored, tally(stored, out), read_records(out)[1], str(state.get("blocked", "")))
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        if service is not None:
            service.stop()
        subprocess.run(["umount", str(data)], capture_output=True, timeout=30)


def test_a_full_disk_fails_the_producer_clearly_and_loses_no_stored_frame(outcome: Outcome) -> None:
    error = outcome.produced.err.strip()[-200:]
    report("disk_full", lost=outcome.counts.lost, duplicates=outcome.counts.duplicates, stored=outcome.stored,
           sent=EVENTS, producer_exit=outcome.produced.rc, producer_error=error)  # fmt: skip
    assert outcome.produced.rc != 0  # never "completed"
    assert "No space left on device" in outcome.produced.err
    assert 0 < outcome.stored < EVENTS
    assert outcome.counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application
    assert outcome.counts.per_worker[0] == list(range(outcome.stored))  # in order


def test_after_a_full_disk_the_consumers_get_a_failed_end(outcome: Outcome) -> None:
    """The buffer refuses the producer for good (its write failed), so it ends the stream itself: no API here."""
    assert outcome.worker_summary is not None, "the worker got no end message within 5 s"
    assert outcome.worker_summary["end_reason"] == "failed"
    assert "No space left on device" in outcome.worker_summary["end_error"]
