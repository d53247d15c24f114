"""Codecs: bit-exact round trips, HDF5-filter byte compatibility, clear errors on bad input."""

from __future__ import annotations

import io
import struct

import h5py
import hdf5plugin
import numpy as np
import pytest

from photonstream.codecs import (
    CODECS,
    bslz4_block_size,
    bslz4_compress,
    bslz4_decompress,
    decode_array,
    encode_array,
    lz4_compress,
    lz4_decompress,
)
from photonstream.errors import ConfigError, SerializerError
from photonstream.frames import EncodedArray, Frame

DTYPES = ["|u1", "<u2", ">u2", "<u4", ">i4", "<i2", "<f4", ">f8", "<f2", "|b1", "<c16"]
SHAPES = [(0,), (1,), (13,), (2, 3, 4101), (16, 35, 38)]


def _sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.poisson(3.0, size=shape) * rng.choice([1, -1], size=shape)).astype(dtype)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_is_bit_exact(codec: str, dtype: str, shape: tuple[int, ...]) -> None:
    array = _sample(dtype, shape)
    encoded = encode_array(array, codec)
    assert encoded.codec == codec and encoded.shape == shape and encoded.dtype == array.dtype.str
    decoded = decode_array(encoded)
    assert decoded.dtype == array.dtype
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()


@pytest.mark.parametrize("codec", CODECS)
def test_non_contiguous_input_round_trips(codec: str) -> None:
    array = _sample("<u2", (64, 48))[::2, ::-1].T
    assert not array.flags.c_contiguous
    np.testing.assert_array_equal(decode_array(encode_array(array, codec)), array)


@pytest.mark.parametrize("codec", CODECS)
def test_poisson_frames_compress(codec: str) -> None:
    frame = np.random.default_rng(1).poisson(0.5, size=(4, 352, 384)).astype(np.uint16)
    assert encode_array(frame, codec).nbytes < frame.nbytes / 2


@pytest.mark.parametrize("level_codec,level", [("lz4", 9), ("zstd", 19), ("zstd", -3)])
def test_levels_round_trip(level_codec: str, level: int) -> None:
    array = _sample("<u4", (100, 100))
    np.testing.assert_array_equal(decode_array(encode_array(array, level_codec, level)), array)


def test_frame_array_decodes_encoded_values() -> None:
    array = _sample("<u2", (8, 9))
    frame = Frame(event=0, arrays={"raw": encode_array(array, "bslz4")})
    np.testing.assert_array_equal(frame.array("raw"), array)


def test_bslz4_header_is_hdf5_filter_framing() -> None:
    array = _sample("<u4", (5000,))
    data = bslz4_compress(array)
    total, block_bytes = struct.unpack_from(">QI", data)
    assert total == array.nbytes
    assert block_bytes == bslz4_block_size(4) * 4 == 8192


def test_bslz4_reads_with_the_bitshuffle_package() -> None:
    bitshuffle = pytest.importorskip("bitshuffle")
    array = _sample("<i2", (33, 101))
    data = bslz4_compress(array)
    payload = np.frombuffer(data, dtype=np.uint8, offset=12)
    out = bitshuffle.decompress_lz4(payload, array.shape, array.dtype, bslz4_block_size(2))
    np.testing.assert_array_equal(out, array)


def _filter_round_trip(chunk: bytes, array: np.ndarray, compression: dict) -> np.ndarray:
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        dataset = f.create_dataset("data", shape=array.shape, dtype=array.dtype, chunks=array.shape, **compression)
        dataset.id.write_direct_chunk((0,) * array.ndim, chunk)
    with h5py.File(buffer, "r") as f:
        return f["data"][()]


@pytest.mark.parametrize("dtype", ["|u1", "<u2", "<u4", "<f4", ">i2"])
def test_bslz4_bytes_are_a_valid_hdf5_bitshuffle_chunk(dtype: str) -> None:
    array = _sample(dtype, (3, 97, 129))
    read = _filter_round_trip(bslz4_compress(array), array, hdf5plugin.Bitshuffle(cname="lz4"))
    assert read.dtype == array.dtype
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize("dtype", ["|u1", "<u2", "<u4", "<f8"])
def test_lz4_bytes_are_a_valid_hdf5_lz4_chunk(dtype: str) -> None:
    array = _sample(dtype, (7, 300))
    read = _filter_round_trip(lz4_compress(array), array, hdf5plugin.LZ4())
    np.testing.assert_array_equal(read, array)


@pytest.mark.parametrize(
    "codec,compression", [("bslz4", hdf5plugin.Bitshuffle(cname="lz4")), ("lz4", hdf5plugin.LZ4())]
)
def test_chunks_written_by_the_hdf5_filter_decode(codec: str, compression: dict) -> None:
    array = _sample("<u2", (4, 66, 70))
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        dataset = f.create_dataset("data", data=array, chunks=array.shape, **compression)
        _, chunk = dataset.id.read_direct_chunk((0, 0, 0))
    decompress = bslz4_decompress if codec == "bslz4" else lz4_decompress
    np.testing.assert_array_equal(decompress(chunk, array.dtype, array.shape), array)


def test_incompressible_lz4_blocks_are_stored_raw() -> None:
    array = np.random.default_rng(2).integers(0, 2**32, size=50, dtype=np.uint32)
    data = lz4_compress(array)
    (block_length,) = struct.unpack_from(">I", data, 12)
    assert block_length == array.nbytes
    assert data[16:] == array.tobytes()
    np.testing.assert_array_equal(lz4_decompress(data, array.dtype, array.shape), array)


def test_unknown_codec_and_bad_levels_are_config_errors() -> None:
    array = np.zeros(4, dtype=np.uint16)
    with pytest.raises(ConfigError, match="unknown codec 'snappy'"):
        encode_array(array, "snappy")
    with pytest.raises(ConfigError, match="bslz4"):
        encode_array(array, "bslz4", level=3)
    with pytest.raises(ConfigError, match="lz4 level"):
        encode_array(array, "lz4", level=40)
    with pytest.raises(ConfigError, match="objects"):
        encode_array(np.array([object()]), "zstd")


@pytest.mark.parametrize("codec", CODECS)
def test_truncated_and_garbage_data_raise_serializer_error(codec: str) -> None:
    array = _sample("<u2", (20, 30))
    encoded = encode_array(array, codec)
    for cut in (0, 5, 12, len(encoded.data) // 2, len(encoded.data) - 1):
        damaged = EncodedArray(encoded.data[:cut], encoded.dtype, encoded.shape, codec)
        with pytest.raises(SerializerError, match=codec):
            decode_array(damaged)
    garbage = EncodedArray(bytes(range(256)) * 3, encoded.dtype, encoded.shape, codec)
    with pytest.raises(SerializerError):
        decode_array(garbage)


def test_shape_mismatch_and_unknown_codec_on_decode() -> None:
    encoded = encode_array(_sample("<u2", (10, 10)), "bslz4")
    with pytest.raises(SerializerError, match="expected 400 bytes"):
        decode_array(EncodedArray(encoded.data, "<u4", (10, 10), "bslz4"))
    with pytest.raises(SerializerError, match="unknown codec"):
        decode_array(EncodedArray(encoded.data, "<u2", (10, 10), "brotli"))
