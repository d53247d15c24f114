from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError
from photonstream.frames import FrameBatch
from tests.processing._steps import make_frame, make_step, parse_step


def test_collects_size_frames_per_batch_and_flushes_the_rest() -> None:
    step = make_step({"type": "batch", "size": 3})
    outputs = [step.apply(make_frame(event, np.full((2, 2), event))) for event in range(7)]

    assert [len(o) for o in outputs] == [0, 0, 1, 0, 0, 1, 0]
    batches = [o[0] for o in outputs if o]
    assert all(isinstance(b, FrameBatch) for b in batches)
    assert [[f.event for f in b.frames] for b in batches] == [[0, 1, 2], [3, 4, 5]]
    [rest] = step.flush()
    assert [f.event for f in rest.frames] == [6]
    assert step.flush() == []
    assert rest.frames[0].arrays["data"][0, 0] == 6


def test_size_is_required_and_positive() -> None:
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.size: Field required$"):
        parse_step({"type": "batch"})
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.size: Input should be greater than or equal to 1$"):
        parse_step({"type": "batch", "size": 0})


def test_calibration_update_flushes_held_frames_first() -> None:
    from photonstream.frames import Calibration, CalibrationMessage

    step = make_step({"type": "batch", "size": 4})
    held = [make_frame(i, np.zeros(2)) for i in range(3)]
    for frame in held:
        assert step.apply(frame) == []
    update = CalibrationMessage("s", Calibration("new", 2), from_event=3)
    out = step.on_calibration(update)
    assert isinstance(out[0], FrameBatch) and [f.event for f in out[0].frames] == [0, 1, 2]
    assert out[1] is update and step.flush() == []
