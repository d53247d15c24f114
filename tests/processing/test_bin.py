from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from tests.processing._steps import make_frame, make_start, make_step, parse_step


def direct_sum(array: np.ndarray, n: int, dtype: type) -> np.ndarray:
    """n x n sums by explicit slicing, independent of the step's reshape."""
    rows, cols = array.shape[-2] // n, array.shape[-1] // n
    out = np.zeros((*array.shape[:-2], rows, cols), dtype=dtype)
    for i in range(rows):
        for j in range(cols):
            out[..., i, j] = array[..., i * n : (i + 1) * n, j * n : (j + 1) * n].astype(dtype).sum(axis=(-2, -1))
    return out


@pytest.mark.parametrize("shape", [(9, 14), (2, 7, 10)])
def test_sums_blocks_trims_remainder_and_widens_uint16(shape: tuple[int, ...]) -> None:
    data = np.full(shape, 65535, dtype=np.uint16)  # sums overflow uint16
    data.flat[::7] = np.arange(data.size)[::7] % 1000
    [frame] = make_step({"type": "bin", "factor": 3}).apply(make_frame(0, data))

    out = frame.arrays["data"]
    assert out.dtype == np.uint32
    assert out.shape == (*shape[:-2], shape[-2] // 3, shape[-1] // 3)
    np.testing.assert_array_equal(out, direct_sum(data, 3, np.uint32))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [(np.float16, np.float32), (np.float32, np.float32), (np.float64, np.float64), (np.int16, np.int32)],
)
def test_sum_dtype(dtype: type, expected: type) -> None:
    data = (np.arange(16).reshape(4, 4) - 5).astype(dtype)
    [frame] = make_step({"type": "bin"}).apply(make_frame(0, data))
    assert frame.arrays["data"].dtype == expected
    np.testing.assert_array_equal(frame.arrays["data"], direct_sum(data, 2, expected))


def test_geometry_and_mask_follow_the_binning() -> None:
    mask = np.zeros((2, 9, 14), dtype=np.uint8)
    mask[1, 4, 5] = 1
    start = make_start((2, 9, 14), beam_center=(7.0, 4.5), pixel_size=75e-6)
    start.arrays["mask"] = mask

    make_step({"type": "bin", "factor": 2}).setup(start)

    assert start.geometry.detector_shape == (2, 4, 7)
    assert start.geometry.pixel_size_m == pytest.approx(150e-6)
    assert start.geometry.beam_center_px == (3.5, 2.25)
    expected = np.zeros((2, 4, 7), dtype=np.uint8)
    expected[1, 2, 2] = 1
    np.testing.assert_array_equal(start.arrays["mask"], expected)


def test_errors() -> None:
    with pytest.raises(StepError, match=r"array 'data' of event 2 has shape \(5,\); it needs 2-D"):
        make_step({"type": "bin"}).apply(make_frame(2, np.zeros(5)))
    with pytest.raises(StepError, match=r"smaller than one 4 x 4 block"):
        make_step({"type": "bin", "factor": 4}).apply(make_frame(2, np.zeros((3, 8))))
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.factor: Input should be greater than or equal to 2$"):
        parse_step({"type": "bin", "factor": 1})
