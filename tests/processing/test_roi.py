from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from tests.processing._steps import make_frame, make_start, make_step, parse_step


def stack(shape: tuple[int, ...]) -> np.ndarray:
    return np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)


def test_box_crops_last_two_axes_of_every_panel() -> None:
    data = stack((3, 10, 12))
    [frame] = make_step({"type": "roi", "box": [2, 7, 3, 11]}).apply(make_frame(0, data))

    np.testing.assert_array_equal(frame.arrays["data"], data[:, 2:7, 3:11])
    assert frame.arrays["data"].flags.c_contiguous


def test_slices_match_from_the_last_axis_and_null_keeps_an_axis() -> None:
    image = stack((10, 12))
    step = make_step({"type": "roi", "slices": [[1, 4], None]})
    [frame] = step.apply(make_frame(0, image))
    np.testing.assert_array_equal(frame.arrays["data"], image[1:4, :])

    panels = stack((3, 10, 12))
    step = make_step({"type": "roi", "slices": [[1, 3], [None, 5], [6, None]]})
    [frame] = step.apply(make_frame(0, panels))
    np.testing.assert_array_equal(frame.arrays["data"], panels[1:3, :5, 6:])


def test_panel_selection_with_box() -> None:
    data = stack((4, 6, 8))
    step = make_step({"type": "roi", "panels": [3, 1], "box": [0, 2, 4, 8]})
    [frame] = step.apply(make_frame(0, data))
    np.testing.assert_array_equal(frame.arrays["data"], data[[3, 1], 0:2, 4:8])


def test_geometry_and_mask_follow_the_crop() -> None:
    mask = np.zeros((3, 10, 12), dtype=np.uint8)
    mask[1, 5, 6] = 1
    start = make_start((3, 10, 12), beam_center=(6.5, 5.25))
    start.arrays["mask"] = mask
    step = make_step({"type": "roi", "box": [2, 7, 3, 11], "panels": [1, 2]})

    step.setup(start)

    assert start.geometry.detector_shape == (2, 5, 8)
    assert start.geometry.beam_center_px == (6.5 - 3, 5.25 - 2)  # (x, y) minus the crop origin
    np.testing.assert_array_equal(start.arrays["mask"], mask[[1, 2], 2:7, 3:11])
    assert start.arrays["mask"][0, 3, 3] == 1  # the bad pixel at (5, 6) is now at (3, 3)


def test_other_arrays_are_left_alone_unless_named() -> None:
    frame = make_frame(0, stack((6, 6)))
    frame.arrays["dark"] = stack((6, 6))
    [out] = make_step({"type": "roi", "box": [0, 2, 0, 2], "arrays": ["dark"]}).apply(frame)
    assert out.arrays["data"].shape == (6, 6) and out.arrays["dark"].shape == (2, 2)


@pytest.mark.parametrize(
    ("options", "shape", "pattern"),
    [
        ({"box": [0, 20, 0, 4]}, (10, 12), r"\[0, 20\] on axis 0 is outside array 'data' of event 3"),
        ({"box": [0, 4, 12, 14]}, (10, 12), r"\[12, 14\] on axis 1 is outside"),
        ({"panels": [0, 5]}, (4, 6, 8), r"panels \[5\] do not exist in array 'data'"),
        ({"panels": [0]}, (6, 8), r"panels need a \(panels, rows, cols\) array"),
        ({"slices": [[0, 1], [0, 1], [0, 1]]}, (6, 8), r"the region has 3 axes but array 'data'"),
    ],
)
def test_regions_outside_the_array_are_step_errors(options: dict, shape: tuple, pattern: str) -> None:
    step = make_step({"type": "roi", **options})
    with pytest.raises(StepError, match=pattern):
        step.apply(make_frame(3, stack(shape)))


def test_region_outside_the_detector_fails_at_setup() -> None:
    step = make_step({"type": "roi", "box": [0, 20, 0, 4]})
    with pytest.raises(StepError, match=r"outside the detector with shape \(10, 12\)"):
        step.setup(make_start((10, 12)))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({}, r"^steps\[0\]: Value error, roi needs box, slices or panels$"),
        ({"box": [5, 5, 0, 4]}, r"box \[5, 5, 0, 4\] is empty"),
        ({"box": [0, 4, 0]}, r"^steps\[0\]\.box\[3\]: Field required$"),
        ({"box": [-1, 4, 0, 4]}, r"^steps\[0\]\.box\[0\]: Input should be greater than or equal to 0"),
        ({"box": [0, 4, 0, 4], "slices": [[0, 4]]}, r"either box or slices, not both"),
        ({"panels": [1, 1]}, r"lists a panel twice"),
        ({"slices": [[3, 1]]}, r"slice \[3, 1\] is empty"),
    ],
)
def test_bad_options_are_one_config_error_line(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as err:
        parse_step({"type": "roi", **options})
    assert "\n" not in str(err.value)
