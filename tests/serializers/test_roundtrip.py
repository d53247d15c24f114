"""Every message kind survives msgpack and hdf5 bit-exactly; broken bytes give one clear SerializerError."""

from __future__ import annotations

import numpy as np
import pytest

from photonstream.errors import SerializerError
from photonstream.serializers.base import create, detect, registry
from tests.helpers import assert_same_message, sample_frame, sample_messages

GENERAL_SERIALIZERS = [
    ("msgpack", {}),
    ("hdf5", {}),
    ("hdf5", {"compression": "bslz4"}),
    ("hdf5", {"compression": "zstd"}),
    ("hdf5", {"compression": "gzip"}),
]


@pytest.mark.parametrize(("name", "options"), GENERAL_SERIALIZERS)
def test_every_message_kind_round_trips_bit_exact(name: str, options: dict) -> None:
    serializer = create(name, **options)
    for message in sample_messages():
        frames = serializer.encode(message)
        assert detect(frames[0]) == name
        assert_same_message(message, serializer.decode(frames))


@pytest.mark.parametrize("dtype", ["<u1", "<u2", ">u2", "<i4", "<u4", "<f4", ">f8", "<c8", "?"])
@pytest.mark.parametrize("name", ["msgpack", "hdf5"])
def test_dtypes_and_byte_orders_survive(name: str, dtype: str) -> None:
    frame = sample_frame()
    frame.arrays["data"] = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    frame.arrays["scalar"] = np.array(3, dtype=dtype)
    frame.arrays["strided"] = (np.arange(100) % 2).astype(dtype)[::3]  # non-contiguous input
    frame.arrays["empty"] = np.zeros((0, 3), dtype=dtype)  # e.g. the spot list of a miss
    serializer = create(name)
    assert_same_message(frame, serializer.decode(serializer.encode(frame)))


@pytest.mark.parametrize("name", ["msgpack", "hdf5"])
def test_truncated_and_garbage_input_raise_one_line(name: str) -> None:
    serializer = create(name)
    good = bytes(serializer.encode(sample_frame())[0])
    for bad in (good[: len(good) // 2], b"", b"\x00garbage" * 10, good[:20]):
        with pytest.raises(SerializerError) as info:
            serializer.decode([bad])
        assert "\n" not in str(info.value) and name in str(info.value)
    with pytest.raises(SerializerError):
        serializer.decode([good, good])


def test_hdf5_event_is_readable_by_plain_h5py() -> None:
    import io

    import h5py

    frame = sample_frame()
    image = create("hdf5", compression="bslz4").encode(frame)[0]
    with h5py.File(io.BytesIO(bytes(image)), "r") as f:
        assert f.attrs["type"] == '"event"'
        np.testing.assert_array_equal(f["arrays/data"][()], frame.arrays["data"])
        np.testing.assert_array_equal(f["metadata/peaks"][()], frame.metadata["peaks"])


def test_object_arrays_are_refused_clearly() -> None:
    frame = sample_frame()
    frame.metadata["bad"] = np.array([object()], dtype=object)
    for name in ("msgpack", "hdf5"):
        with pytest.raises(SerializerError, match="cannot encode event"):
            create(name).encode(frame)


def test_detect_rejects_unknown_bytes() -> None:
    with pytest.raises(SerializerError, match="cannot tell"):
        detect(b"\x00\x01\x02")


def test_registry_lists_builtins() -> None:
    assert {"msgpack", "hdf5"} <= set(registry.names())


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "zstd", "gzip"])
@pytest.mark.parametrize("dtype", ["<u2", "<u4", "<f4", ">i4"])
def test_hdf5_compressed_event_arrays_round_trip(compression: str, dtype: str) -> None:
    frame = sample_frame()
    frame.arrays["data"] = np.random.default_rng(1).poisson(0.3, (4, 64, 96)).astype(dtype)  # sparse, like data
    serializer = create("hdf5", compression=compression)
    image = serializer.encode(frame)[0]
    assert len(image) < len(create("hdf5").encode(frame)[0]) - frame.arrays["data"].nbytes // 2  # really compressed
    assert_same_message(frame, serializer.decode([image]))
