from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from tests.processing._steps import make_frame, make_step, parse_step


def run(step, metadata: list[dict]) -> list[int]:
    """Events of the frames the step keeps."""
    kept = []
    for event, meta in enumerate(metadata):
        out = step.apply(make_frame(event, np.zeros((1, 1)), **meta))
        kept += [f.event for f in out]
    return kept


def test_drops_misses_and_passes_unflagged_frames() -> None:
    metadata = [{"hit": True}, {"hit": False}, {}, {"hit": np.bool_(False)}, {"hit": np.bool_(True)}]
    assert run(make_step({"type": "filter"}), metadata) == [0, 2, 4]
    assert run(make_step({"type": "filter", "require_flag": True}), metadata) == [0, 4]
    assert run(make_step({"type": "filter", "drop_misses": False}), metadata) == [0, 1, 2, 3, 4]


def test_every_nth_counts_frames_that_passed_the_other_conditions() -> None:
    metadata = [{"hit": event % 3 != 1} for event in range(12)]
    hits = [e for e, m in enumerate(metadata) if m["hit"]]
    assert run(make_step({"type": "filter", "every": 3}), metadata) == hits[::3]


def test_where_conditions_all_hold() -> None:
    metadata = [
        {"n_peaks": 12, "label": "a"},
        {"n_peaks": np.int32(9), "label": "a"},
        {"n_peaks": np.array([15]), "label": "b"},
        {"label": "a"},  # no n_peaks: dropped
        {"n_peaks": 30.0, "label": "a"},
    ]
    step = make_step({"type": "filter", "where": {"n_peaks": {">=": 10, "<": 30}, "label": {"==": "a"}}})
    assert run(step, metadata) == [0]
    step = make_step({"type": "filter", "where": {"n_peaks": {"!=": 9}}})
    assert run(step, metadata) == [0, 2, 4]


def test_where_on_non_scalar_or_incomparable_metadata_is_a_step_error() -> None:
    step = make_step({"type": "filter", "where": {"peaks": {">": 1}}})
    with pytest.raises(StepError, match=r"metadata 'peaks' of event 0 is an array of shape \(5, 3\)"):
        step.apply(make_frame(0, np.zeros(1), peaks=np.zeros((5, 3))))
    with pytest.raises(StepError, match=r"cannot compare 'x' \(event 0\) > 1"):
        step.apply(make_frame(0, np.zeros(1), peaks="x"))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"every": 0}, r"^steps\[0\]\.every: Input should be greater than or equal to 1$"),
        ({"where": {"n": {"=~": 3}}}, r"^steps\[0\]\.where\.n\.=~\.\[key\]: Input should be '==', '!='"),
        ({"where": {"n": {">": [1, 2]}}}, r"^steps\[0\]\.where\.n\.>"),
    ],
)
def test_bad_options(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_step({"type": "filter", **options})
