"""The runner: start message first, outcome counts, end message on every path, limits and cancellation."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import SourceError
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.pipeline import Pipeline


def cxi(path: Path, n: int = 12) -> np.ndarray:
    data = np.arange(n * 4 * 5, dtype=np.uint16).reshape(n, 4, 5)
    with h5py.File(path, "w") as f:
        f["entry_1/data_1/data"] = data
    return data


def pipeline(path: Path, **extra) -> Pipeline:
    config = {"source": {"type": "hdf5", "files": [str(path)]}, "handlers": [{"type": "null"}], **extra}
    return Pipeline(validate_pipeline(config))


class Recorder:
    """Collects what the null handler was handed."""

    def __init__(self, p: Pipeline) -> None:
        self.messages: list = []
        handler = p.handlers[0]
        original = handler.handle

        def handle(message, frames):
            self.messages.append(message)
            original(message, frames)

        handler.handle = handle  # type: ignore[method-assign]


def test_start_events_end_in_order_with_sequence_numbers(tmp_path: Path) -> None:
    data = cxi(tmp_path / "r.cxi")
    p = pipeline(tmp_path / "r.cxi", stream={"experiment": "xpptut15", "run": 42, "stream_id": "epix"})
    rec = Recorder(p)
    end = p.run()
    kinds = [m.kind for m in rec.messages]
    assert kinds == ["start"] + ["event"] * 12 + ["end"]
    assert [m.seq for m in rec.messages] == list(range(14))
    start = rec.messages[0]
    assert isinstance(start, StartMessage) and start.experiment == "xpptut15" and start.run == 42
    assert start.pipeline["source"]["type"] == "hdf5"
    events = [m for m in rec.messages if isinstance(m, Frame)]
    assert all(e.stream_id == "epix" and e.run == 42 and e.created_ns > 0 for e in events)
    np.testing.assert_array_equal(np.stack([e.arrays["data"] for e in events]), data)
    assert end.reason == "completed" and end.events_sent == 12 and end.counts["read"] == 12
    assert end.counts["dropped"] == 0


def test_max_events_and_filtering_are_counted(tmp_path: Path) -> None:
    cxi(tmp_path / "r.cxi")
    p = pipeline(tmp_path / "r.cxi", max_events=9, steps=[{"type": "filter", "every": 3}])
    end = p.run()
    assert end.counts["read"] == 9 and end.events_sent == 3 and end.counts["dropped"] == 6


def test_source_failure_still_sends_an_end_message_then_raises(tmp_path: Path) -> None:
    p = pipeline(tmp_path / "missing.cxi")
    rec = Recorder(p)
    with pytest.raises(SourceError):
        p.run()
    assert isinstance(rec.messages[-1], EndMessage)
    assert rec.messages[-1].reason == "failed" and "missing.cxi" in rec.messages[-1].error


def test_cancel_ends_the_stream_as_cancelled(tmp_path: Path) -> None:
    cxi(tmp_path / "r.cxi", n=50)
    p = pipeline(tmp_path / "r.cxi")
    seen = []

    def progress(stats) -> None:
        seen.append(stats.counts["read"])
        if stats.counts["read"] >= 5:
            p.cancel()

    end = p.run(progress=progress, progress_every=5)
    assert end.reason == "cancelled"
    assert 5 <= end.events_sent < 50


def test_crashing_step_fails_the_run_with_the_step_named(tmp_path: Path) -> None:
    cxi(tmp_path / "r.cxi")
    ped = tmp_path / "ped.npy"
    np.save(ped, np.zeros((3, 3), np.float32))  # wrong shape for 4×5 frames
    p = pipeline(tmp_path / "r.cxi", steps=[{"type": "calibrate", "pedestal": str(ped)}])
    rec = Recorder(p)
    with pytest.raises(Exception) as info:
        p.run()
    assert "\n" not in str(info.value)
    assert rec.messages[-1].reason == "failed"
