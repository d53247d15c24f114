from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError
from tests.processing._steps import make_frame, make_step, parse_step


def test_below_threshold_becomes_zero_and_clip_caps_floats() -> None:
    rng = np.random.default_rng(5)
    data = rng.normal(2, 3, size=(2, 5, 6)).astype(np.float32)
    [frame] = make_step({"type": "threshold", "threshold": 1.5, "clip_max": 6.25}).apply(make_frame(0, data.copy()))

    expected = np.where(data < np.float32(1.5), np.float32(0), data)
    expected = np.minimum(expected, np.float32(6.25))
    assert frame.arrays["data"].dtype == np.float32
    np.testing.assert_array_equal(frame.arrays["data"], expected)


def test_integer_clip_rounds_down_and_a_clip_beyond_the_dtype_is_ignored() -> None:
    data = np.array([[0, 3, 9, 250]], dtype=np.uint8)
    [frame] = make_step({"type": "threshold", "threshold": 3, "clip_max": 8.7}).apply(make_frame(0, data))
    np.testing.assert_array_equal(frame.arrays["data"], np.array([[0, 3, 8, 8]], dtype=np.uint8))

    [frame] = make_step({"type": "threshold", "threshold": 3, "clip_max": 300}).apply(make_frame(0, data))
    np.testing.assert_array_equal(frame.arrays["data"], np.array([[0, 3, 9, 250]], dtype=np.uint8))


def test_read_only_input_is_not_written() -> None:
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    data.flags.writeable = False
    [frame] = make_step({"type": "threshold", "threshold": 5}).apply(make_frame(0, data))
    assert frame.arrays["data"][0, 0] == 0 and frame.arrays["data"][1, 1] == 5
    np.testing.assert_array_equal(data, np.arange(12).reshape(3, 4))


def test_nan_stays_nan() -> None:
    data = np.array([np.nan, 0.5, 2.0])
    [frame] = make_step({"type": "threshold", "threshold": 1, "clip_max": 1.5}).apply(make_frame(0, data))
    np.testing.assert_array_equal(frame.arrays["data"], [np.nan, 0.0, 1.5])


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({}, r"^steps\[0\]\.threshold: Field required$"),
        ({"threshold": 5, "clip_max": 5}, r"clip_max \(5\.0\) must be above threshold \(5\.0\)"),
        ({"threshold": "nan"}, r"threshold must be a finite number"),
    ],
)
def test_bad_options(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_step({"type": "threshold", **options})
