"""Decoders under garbage: every serializer's output cut short, a bounded fuzz of each ``decode`` (in a process
of its own, so a native crash or a hang fails the test) and of the buffer protocol's envelope parser.

Numbers asserted: truncated messages decoded = 0 (each is one SerializerError line), fuzz inputs that raised
anything but SerializerError = 0, envelopes that raised anything but ProtocolError = 0.
"""

from __future__ import annotations

import json
import subprocess
import sys

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from photonstream.buffer import protocol as P
from photonstream.errors import SerializerError
from photonstream.serializers.base import create
from photonstream.serializers.hdf5 import check_global_heaps
from tests.faults.support import REPO, environment
from tests.helpers import sample_messages

FUZZ_EXAMPLES = 300
FUZZ_TIMEOUT_S = 90.0

ENCODINGS = [
    ("msgpack", {}),
    ("hdf5", {}),
    ("hdf5", {"compression": "bslz4"}),
    ("cbor-stream2", {}),
    ("cbor-stream2", {"compression": "bslz4"}),
    ("cbor-stream2", {"compression": "lz4"}),
]


def cut_points(length: int) -> list[int]:
    return sorted({0, 1, 7, length // 4, length // 2, 3 * length // 4, length - 9, length - 1} - {length})


@pytest.mark.parametrize(("name", "options"), ENCODINGS, ids=lambda v: str(v or ""))
def test_every_message_truncated_anywhere_is_one_serializer_error(name: str, options: dict) -> None:
    serializer = create(name, **options)
    cuts = decoded = refused = 0
    for message in sample_messages():
        if name == "cbor-stream2" and message.kind == "batch":
            continue  # Stream V2 has one image per message: the serializer refuses batches
        whole = b"".join(bytes(f) for f in serializer.encode(message))
        for cut in cut_points(len(whole)):
            cuts += 1
            try:
                serializer.decode([whole[:cut]])
                decoded += 1
            except SerializerError as exc:
                assert "\n" not in str(exc) and name in str(exc), exc
                refused += 1
    assert cuts >= 40
    assert (decoded, refused) == (0, cuts)


@pytest.mark.parametrize("name", ["msgpack", "hdf5", "cbor-stream2"])
def test_fuzzed_input_gives_only_serializer_errors(name: str) -> None:
    """A crash (signal), a hang (timeout) or any other exception fails; hypothesis prints the shrunk input."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "tests.abuse.fuzz_decoders", name, str(FUZZ_EXAMPLES)],
            cwd=REPO, env=environment(), capture_output=True, text=True, timeout=FUZZ_TIMEOUT_S,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name}: decoding fuzzed input hung for {FUZZ_TIMEOUT_S:g} s") from None
    assert done.returncode == 0, f"{name}: fuzz process ended with {done.returncode}:\n{done.stderr[-4000:]}"
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["examples"] == FUZZ_EXAMPLES
    assert summary["refused"] + summary.get("decoded", 0) == FUZZ_EXAMPLES  # nothing else came out
    assert summary["refused"] > FUZZ_EXAMPLES // 2  # the inputs were mostly broken, as meant


def test_a_zero_size_free_space_object_in_a_global_heap_is_refused_before_hdf5_sees_it() -> None:
    """HDF5 loops forever (holding the GIL) on such a file; found by the fuzz above (one flipped byte)."""
    image = bytearray(b"".join(bytes(f) for f in create("hdf5").encode(sample_messages()[-1])))
    heap = image.find(b"GCOL\x01\x00\x00\x00")
    assert heap > 0
    check_global_heaps(bytes(image))  # the intact file passes
    p = heap + 16
    while int.from_bytes(image[p : p + 2], "little") != 0:  # walk to the free-space object
        p += 16 + (int.from_bytes(image[p + 8 : p + 16], "little") + 7) // 8 * 8
    image[p + 8 : p + 16] = bytes(8)
    with pytest.raises(SerializerError, match="corrupt global heap object"):
        create("hdf5").decode([bytes(image)])


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=8), st.binary(max_size=8)
)
HEADERS = st.dictionaries(st.text(max_size=4), VALUES, max_size=6)
COMMANDS = st.binary(min_size=1, max_size=1)
ENVELOPES = st.one_of(
    st.binary(max_size=64),
    st.builds(lambda c, h: P.PROTOCOL + c + h, st.binary(min_size=0, max_size=2), st.binary(max_size=48)),
    st.builds(lambda c, h: P.PROTOCOL + c + msgpack.packb(h), st.binary(min_size=1, max_size=1), HEADERS),
    st.builds(lambda c, n: P.PROTOCOL + c + b"\x91" * n + b"\xc0", COMMANDS, st.integers(0, 3000)),
)  # fmt: skip
parsed: dict[str, int] = {"ok": 0, "refused": 0}


@settings(max_examples=400, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(ENVELOPES)
def test_the_envelope_parser_raises_only_protocol_errors(raw: bytes) -> None:
    try:
        command, header = P.open_envelope(raw)
    except P.ProtocolError as exc:
        assert exc.code in ("protocol", "malformed") and "\n" not in str(exc)
        parsed["refused"] += 1
        return
    assert len(command) == 1 and isinstance(header, dict)
    parsed["ok"] += 1
