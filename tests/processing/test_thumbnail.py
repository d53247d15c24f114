"""thumbnail: the max-pooled copy of every frame (what the hit-classifier trainer learns from after a veto)."""

from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from photonstream.processing.thumbnail import max_pool_to
from tests.processing._steps import make_frame, make_step, parse_step


def brute_force_pool(image: np.ndarray, fr: int, fc: int) -> np.ndarray:
    rows, cols = image.shape
    out = np.zeros((-(-rows // fr), -(-cols // fc)), dtype=image.dtype)
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            block = image[i * fr : (i + 1) * fr, j * fc : (j + 1) * fc]
            out[i, j] = max(block.max(), 0) if (block.shape != (fr, fc)) else block.max()  # padding is zeros
    return out


@pytest.mark.parametrize(("shape", "size", "factors"), [((4, 50, 30), 16, (13, 2)), ((64, 96), 32, (2, 3))])
def test_max_pool_matches_block_maxima_with_zero_padding(shape, size, factors) -> None:
    image = np.random.default_rng(1).integers(0, 1000, size=shape, dtype=np.uint16)
    pooled = max_pool_to(image, size)
    flat = image.reshape(-1, shape[-1])
    np.testing.assert_array_equal(pooled, brute_force_pool(flat, *factors))
    assert pooled.dtype == np.uint16


def test_step_adds_the_thumbnail_and_keeps_the_image() -> None:
    data = np.zeros((2, 40, 40), np.uint16)
    data[1, 33, 7] = 500  # one bright pixel survives max pooling
    frame = make_step({"type": "thumbnail", "size": 8}).apply(make_frame(0, data))[0]
    thumbnail = frame.arrays["thumbnail"]
    assert thumbnail.shape == (8, 8) and thumbnail.max() == 500 and np.count_nonzero(thumbnail) == 1
    assert frame.arrays["data"] is data
    small = np.ones((8, 8), np.float32)  # already as small as asked: a copy, not the same array
    copied = make_step({"type": "thumbnail", "size": 8, "output": "t"}).apply(make_frame(0, small))[0].arrays["t"]
    assert copied is not small and not np.shares_memory(copied, small)
    np.testing.assert_array_equal(copied, small)


def test_errors_name_the_field_or_the_array() -> None:
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.size: "):
        parse_step({"type": "thumbnail", "size": 4})
    with pytest.raises(StepError, match="no array 'image'"):
        make_step({"type": "thumbnail", "array": "image"}).apply(make_frame(0, np.zeros((8, 8))))
    with pytest.raises(StepError, match="2-D"):
        make_step({"type": "thumbnail"}).apply(make_frame(0, np.zeros(8)))
