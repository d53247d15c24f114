from __future__ import annotations

import numpy as np
import pytest

from photonstream.codecs import CODECS, decode_array, encode_array
from photonstream.errors import ConfigError, StepError
from photonstream.frames import EncodedArray
from photonstream.processing.compress import CompressOptions
from tests.processing._steps import make_frame, make_step, parse_step, raw_frames


def sample_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    floats = rng.normal(size=(3, 17)).astype(">f8")
    floats[0, 0] = np.nan
    return {
        "data": raw_frames((2, 16, 24), 1, high=40)[0],
        "spectrum": floats,
        "strided": np.arange(60, dtype=np.int32).reshape(6, 10)[:, ::3],  # not contiguous
    }


def test_codec_choices_are_the_codecs_modules() -> None:
    assert set(CompressOptions.model_fields["codec"].annotation.__args__) == set(CODECS)


@pytest.mark.parametrize(("codec", "level"), [("bslz4", None), ("lz4", None), ("lz4", 9), ("zstd", None), ("zstd", 19)])
def test_round_trip_is_bit_exact_and_ratio_recorded(codec: str, level: int | None) -> None:
    arrays = sample_arrays()
    frame = make_frame(0, arrays["data"].copy())
    frame.arrays["spectrum"] = arrays["spectrum"].copy()
    frame.arrays["strided"] = arrays["strided"].copy()
    step = make_step({"type": "compress", "codec": codec, "level": level, "arrays": ["data", "spectrum", "strided"]})

    [out] = step.apply(frame)

    encoded = [out.arrays[name] for name in arrays]
    assert all(isinstance(e, EncodedArray) and e.codec == codec for e in encoded)
    for name, original in arrays.items():
        decoded = out.array(name)
        assert decoded.dtype == original.dtype and decoded.shape == original.shape
        assert decoded.tobytes() == np.ascontiguousarray(original).tobytes()
    raw = sum(a.nbytes for a in arrays.values())
    assert out.metadata["compression_ratio"] == pytest.approx(raw / sum(e.nbytes for e in encoded))
    assert out.metadata["compression_ratio"] > 1  # the small-integer image dominates and compresses


def test_only_named_arrays_are_compressed_and_encoded_ones_pass_through() -> None:
    data = raw_frames((8, 8), 1)[0]
    already = encode_array(np.arange(100, dtype=np.uint16), "zstd")
    frame = make_frame(0, data.copy())
    frame.arrays["other"] = data.copy()
    frame.arrays["pre"] = already

    [out] = make_step({"type": "compress", "arrays": ["data", "pre"]}).apply(frame)

    assert isinstance(out.arrays["other"], np.ndarray)
    assert out.arrays["pre"] is already
    np.testing.assert_array_equal(decode_array(out.arrays["data"]), data)
    expected = (data.nbytes + 200) / (out.arrays["data"].nbytes + already.nbytes)
    assert out.metadata["compression_ratio"] == pytest.approx(expected)


def test_missing_array_is_a_step_error() -> None:
    with pytest.raises(StepError, match=r"step 'compress': event 5 has no array 'image' \(it has: data\)"):
        make_step({"type": "compress", "arrays": ["image"]}).apply(make_frame(5, np.zeros((2, 2))))


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"codec": "gzip"}, r"^steps\[0\]\.codec: Input should be 'bslz4', 'lz4' or 'zstd'$"),
        ({"codec": "bslz4", "level": 3}, r"^steps\[0\]: Value error, codec 'bslz4' has no compression level"),
        ({"codec": "lz4", "level": 13}, r"^steps\[0\]: Value error, lz4 level must be 1\.\.12, got 13$"),
        ({"codec": "zstd", "level": 23}, r"^steps\[0\]: Value error, zstd level must be -7\.\.22, got 23$"),
    ],
)
def test_bad_options(options: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_step({"type": "compress", **options})


@pytest.mark.parametrize(
    ("codec", "inside", "outside"), [("lz4", 1, 0), ("lz4", 12, 13), ("zstd", -7, -8), ("zstd", 22, 23)]
)
def test_level_limits_agree_with_the_codecs_module(codec: str, inside: int, outside: int) -> None:
    parse_step({"type": "compress", "codec": codec, "level": inside})
    encode_array(np.zeros(4, dtype=np.uint8), codec, inside)
    with pytest.raises(ConfigError):
        parse_step({"type": "compress", "codec": codec, "level": outside})
    with pytest.raises(ConfigError):
        encode_array(np.zeros(4, dtype=np.uint8), codec, outside)
