"""veto: misses lose their image but still travel (metadata, thumbnail); hits and a sample of misses travel whole."""

from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import ConfigError, StepError
from photonstream.frames import Frame
from photonstream.serializers.msgpack import MsgpackOptions, MsgpackSerializer
from tests.processing._steps import make_step, parse_step


def frame(event: int, **metadata) -> Frame:
    arrays = {"data": np.full((2, 4, 4), event, np.uint16), "thumbnail": np.full((2, 2), event, np.uint16)}
    return Frame(event=event, arrays=arrays, metadata=dict(metadata))


def whole(step, frames: list[Frame]) -> list[int]:
    """Events that came out with their image; every frame must come out."""
    out = [f for fr in frames for f in step.apply(fr)]
    assert [f.event for f in out] == [f.event for f in frames]
    for f in out:
        assert "thumbnail" in f.arrays
    return [f.event for f in out if "data" in f.arrays]


def test_hits_travel_whole_and_misses_without_their_image() -> None:
    frames = [frame(e, hit=e % 4 == 0, n_peaks=e) for e in range(12)]
    assert whole(make_step({"type": "veto"}), frames) == [0, 4, 8]
    assert [f.metadata["vetoed"] for f in frames] == [e % 4 != 0 for e in range(12)]
    assert all(f.metadata["n_peaks"] == f.event for f in frames)  # the metadata stays


def test_keep_every_samples_the_misses_whole() -> None:
    frames = [frame(e, hit=e in (2, 3)) for e in range(12)]
    misses = [e for e in range(12) if e not in (2, 3)]
    kept = whole(make_step({"type": "veto", "keep_every": 4}), frames)
    assert kept == sorted([2, 3, *misses[::4]])


def test_unflagged_frames_pass_whole_unless_a_flag_is_required() -> None:
    assert whole(make_step({"type": "veto"}), [frame(0), frame(1, hit=False)]) == [0]
    assert whole(make_step({"type": "veto", "require_flag": True}), [frame(0), frame(1, hit=True)]) == [1]


def test_a_stripped_frame_survives_the_wire_and_compress_passes_it() -> None:
    steps = [make_step({"type": "veto"}), make_step({"type": "compress", "codec": "lz4", "skip_missing": True})]
    out = []
    for f in (frame(0, hit=True, n_peaks=12), frame(1, hit=False, n_peaks=2)):
        for step in steps:
            (f,) = step.apply(f)
        out.append(f)
    serializer = MsgpackSerializer(MsgpackOptions())
    hit, miss = (serializer.decode(serializer.encode(f)) for f in out)
    np.testing.assert_array_equal(hit.array("data"), np.zeros((2, 4, 4), np.uint16))
    assert hit.metadata["vetoed"] is False and hit.metadata["compression_ratio"] > 0
    assert sorted(miss.arrays) == ["thumbnail"] and miss.metadata["vetoed"] is True
    assert miss.metadata["n_peaks"] == 2 and "compression_ratio" not in miss.metadata
    with pytest.raises(StepError, match="no array 'data'"):
        make_step({"type": "compress", "codec": "lz4"}).apply(out[1])


def test_bad_options_name_the_field() -> None:
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.keep_every: "):
        parse_step({"type": "veto", "keep_every": -1})
    with pytest.raises(ConfigError, match=r"^steps\[0\]\.arrays: "):
        parse_step({"type": "veto", "arrays": []})
