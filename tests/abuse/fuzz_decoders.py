"""A bounded hypothesis fuzz of one serializer's ``decode``, run as its own process by ``test_decoders.py``:

    python -m tests.abuse.fuzz_decoders SERIALIZER EXAMPLES

so a native crash in a decoding library (HDF5, cbor2's C extension, a decompressor) fails the test instead of
killing pytest. Inputs: random bytes, valid encodings with bytes flipped, inserted, deleted or cut, and
well-formed documents of the format with hostile content (huge claimed shapes, wrong dtypes, deep nesting).

Only ``SerializerError`` may come out of ``decode``; anything else is re-raised, so hypothesis shrinks it and the
process exits non-zero with the failing input. The last line printed is a JSON summary of the outcomes.
"""

from __future__ import annotations

import json
import resource
import sys
from collections import Counter
from typing import Any

import cbor2
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photonstream.errors import SerializerError
from photonstream.serializers.base import create
from tests.helpers import sample_messages

MEMORY_LIMIT = 3 << 30  # a decoder that believes a hostile size claim fails here instead of swapping the host

SERIALIZERS = {
    "msgpack": ("msgpack", {}),
    "hdf5": ("hdf5", {"compression": "bslz4"}),
    "cbor-stream2": ("cbor-stream2", {"compression": "bslz4"}),
}

outcomes: Counter[str] = Counter()


def valid_encodings(name: str, options: dict[str, Any]) -> list[bytes]:
    serializer = create(name, **options)
    found = []
    for message in sample_messages():
        if name == "cbor-stream2" and message.kind == "batch":
            continue  # Stream V2 has one image per message
        found.append(b"".join(bytes(f) for f in serializer.encode(message)))
    return found


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, inserted or deleted, then possibly cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "byte"]))
        if action == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        else:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0xC1, 0xDB, 0x9F, 0xBF]))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.binary(max_size=32),
)
HOSTILE_SHAPES = st.lists(st.one_of(st.integers(-2, 4), st.just(2**31), st.just(2**62)), max_size=4)
DTYPES = st.sampled_from(["<u2", ">f8", "|b1", "<c8", "O", "V7", "S3", "<M8[s]", "nonsense", ""])
FIELDS = ["type", "kind", "event", "arrays", "metadata", "frames", "geometry", "calibration", "data", "user_data",
          "image_id", "series_id", "shape", "nd", "codec", "photonstream", "message", "pixel_mask"]  # fmt: skip


ND_MAPS = st.fixed_dictionaries(
    {"nd": st.just(True), "type": DTYPES, "shape": HOSTILE_SHAPES, "data": st.binary(max_size=64)},
    optional={"codec": st.sampled_from(["bslz4", "lz4", "zstd", "x"])},
)
CODEC_NAMES = st.sampled_from(["bslz4", "lz4", "zstd", 7])
TYPED = st.builds(cbor2.CBORTag, st.integers(64, 87), st.binary(max_size=64))
COMPRESSED = st.builds(
    lambda tag, codec, size, data: cbor2.CBORTag(tag, cbor2.CBORTag(56500, [codec, size, data])),
    st.integers(64, 87), CODEC_NAMES, st.integers(-1, 9), st.binary(max_size=64),
)  # fmt: skip
CBOR_ARRAYS = st.builds(
    lambda tag, shape, content: cbor2.CBORTag(tag, [shape, content]),
    st.sampled_from([40, 1040]), HOSTILE_SHAPES, st.one_of(TYPED, COMPRESSED),
)  # fmt: skip


def trees(leaf: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    def containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS), inner, max_size=5))

    return st.recursive(leaf, containers, max_leaves=20)


@st.composite
def msgpack_documents(draw: st.DrawFn) -> bytes:
    top = draw(st.dictionaries(st.sampled_from(FIELDS), trees(st.one_of(SCALARS, ND_MAPS)), min_size=1, max_size=8))
    top["kind"] = draw(st.sampled_from(["start", "event", "batch", "calibration", "end", "other"]))
    return msgpack.packb(top, use_bin_type=True)


@st.composite
def cbor_documents(draw: st.DrawFn) -> bytes:
    tree = trees(st.one_of(SCALARS, CBOR_ARRAYS))
    top = draw(st.dictionaries(st.sampled_from(FIELDS), tree, max_size=8))
    top["type"] = draw(st.sampled_from(["start", "image", "end", "calibration", "other"]))
    if draw(st.booleans()):
        ours = st.dictionaries(st.sampled_from(["message", "arrays", "version"]), tree, max_size=3)
        top["user_data"] = {"photonstream": draw(ours)}
    return b"\xd9\xd9\xf7" + cbor2.dumps(top)


def inputs(name: str, seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    documents = {"msgpack": msgpack_documents(), "cbor-stream2": cbor_documents()}
    choices = [st.binary(max_size=256), mutated(seeds), mutated(seeds)]
    if name in documents:
        choices.append(documents[name])
    return st.one_of(choices)


def main(name: str, examples: int) -> dict[str, Any]:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    plugin, options = SERIALIZERS[name]
    serializer = create(plugin, **options)
    seeds = valid_encodings(plugin, options)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(inputs(name, seeds))
    def decode_only_raises_serializer_error(data: bytes) -> None:
        try:
            serializer.decode([data])
            outcomes["decoded"] += 1
        except SerializerError as exc:
            if "\n" in str(exc):
                raise AssertionError(f"a SerializerError of several lines: {exc!r}") from None
            outcomes["refused"] += 1

    decode_only_raises_serializer_error()
    return {"serializer": name, "examples": sum(outcomes.values()), **outcomes}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
