"""cbor-stream2: spec readers see DECTRIS fields and arrays; photonstream decodes its own messages bit-exactly
and a detector's spec-only messages from their fields; broken input gives one SerializerError line."""

from __future__ import annotations

import cbor2
import numpy as np
import pytest

from photonstream.codecs import bslz4_compress, encode_array
from photonstream.errors import SerializerError
from photonstream.frames import CalibrationMessage, EndMessage, Frame, FrameBatch, StartMessage
from photonstream.serializers.base import create, detect
from tests import stream2_simulator as sim
from tests.helpers import assert_same_message, sample_frame, sample_messages, sample_start
from tests.serializers import stream2_reference_decoder as reference

OPTIONS = [
    {},
    {"compression": "bslz4"},
    {"compression": "lz4"},
    {"compression": "bslz4", "image_layout": "native"},
]


def _encode(serializer, message) -> bytes:  # type: ignore[no-untyped-def]
    frames = serializer.encode(message)
    assert len(frames) == 1
    return bytes(frames[0])


@pytest.mark.parametrize("compression", ["none", "bslz4", "lz4"])
def test_reference_decoder_reads_start_image_end(compression: str) -> None:
    serializer = create("cbor-stream2", compression=compression, channels=["data", "spectrum", "threshold_2", "tiny"])
    start = sample_start()
    start.arrays["mask"] = (np.arange(16 * 352 * 384) % 7 == 0).astype(np.uint8).reshape(16, 352, 384)
    frame = sample_frame(event=5)
    frame.arrays["threshold_2"] = np.arange(30, dtype="<u4").reshape(5, 6) * 100_000
    frame.arrays["tiny"] = np.arange(7, dtype=np.uint8)

    s = reference.decode(_encode(serializer, start))
    geometry = start.geometry
    assert s["type"] == "start" and s["series_id"] == start.run
    assert s["series_unique_id"] == "xpptut15/42/epix"
    assert (s["beam_center_x"], s["beam_center_y"]) == geometry.beam_center_px
    assert s["pixel_size_x"] == s["pixel_size_y"] == geometry.pixel_size_m
    assert s["detector_distance"] == geometry.distance_m == s["detector_translation"][2]
    assert s["incident_energy"] == geometry.photon_energy_ev
    assert s["incident_wavelength"] == pytest.approx(12398.42 / geometry.photon_energy_ev, rel=1e-6)
    assert (s["image_size_y"], s["image_size_x"]) == (16 * 352, 384)
    assert s["channels"] == ["data", "spectrum", "threshold_2", "tiny"]
    assert s["detector_description"] == "epix10k2m"
    for channel in s["channels"]:
        np.testing.assert_array_equal(s["pixel_mask"][channel], start.arrays["mask"].reshape(16 * 352, 384))
    assert s["pixel_mask_enabled"] is True
    assert s["user_data"]["photonstream"]["message"]["calibration"]["identifier"] == "ped-2026-11-25"

    i = reference.decode(_encode(serializer, frame))
    assert i["type"] == "image" and i["image_id"] == frame.event
    assert (i["series_id"], i["series_unique_id"]) == (s["series_id"], s["series_unique_id"])
    assert list(i["data"]) == s["channels"]  # in the start's order
    np.testing.assert_array_equal(i["data"]["data"], frame.arrays["data"].reshape(32, 24))
    assert i["data"]["data"].dtype == np.dtype("<u2")
    np.testing.assert_array_equal(i["data"]["threshold_2"], frame.arrays["threshold_2"])
    np.testing.assert_array_equal(i["data"]["tiny"], frame.arrays["tiny"].reshape(1, 7))
    spectrum = i["data"]["spectrum"]
    assert spectrum.dtype == np.dtype(">f8") and spectrum.shape == (1, 64)
    np.testing.assert_array_equal(spectrum[0], frame.arrays["spectrum"])
    assert i["user_data"]["photonstream"]["message"]["metadata"]["label"] == "shot"

    end = EndMessage("epix", events_sent=1, counts={"read": 1})
    e = reference.decode(_encode(serializer, end))
    assert e["type"] == "end" and (e["series_id"], e["series_unique_id"]) == (42, "xpptut15/42/epix")
    assert e["user_data"]["photonstream"]["message"]["counts"] == {"read": 1}


@pytest.mark.parametrize("codec", ["bslz4", "lz4"])
@pytest.mark.parametrize("dtype", ["|u1", "<u2", "<u4", ">u2", "<f4"])
def test_encoded_arrays_travel_as_their_own_bytes(codec: str, dtype: str) -> None:
    array = (np.random.default_rng(3).poisson(2.0, size=(3, 40, 50))).astype(dtype)
    encoded = encode_array(array, codec)
    frame = Frame(event=0, arrays={"data": encoded})
    message = _encode(create("cbor-stream2"), frame)
    assert encoded.data in message  # not recompressed
    np.testing.assert_array_equal(reference.decode(message)["data"]["data"], array.reshape(120, 50))
    decoded = create("cbor-stream2").decode([message])
    assert_same_message(frame, decoded)


@pytest.mark.parametrize("options", OPTIONS)
def test_our_messages_round_trip_bit_exact(options: dict) -> None:
    serializer = create("cbor-stream2", **options)
    for message in sample_messages():
        if isinstance(message, FrameBatch):
            continue
        frames = serializer.encode(message)
        assert detect(frames[0]) == "cbor-stream2"
        assert_same_message(message, serializer.decode(frames))


@pytest.mark.parametrize("compression", ["none", "bslz4"])
@pytest.mark.parametrize("dtype", ["|u1", "<u2", ">u2", "<i4", ">u4", "<f4", ">f8", "<f2", "|i1", "<c8", "?"])
def test_dtypes_and_byte_orders_survive(compression: str, dtype: str) -> None:
    frame = sample_frame()
    frame.arrays["data"] = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    frame.arrays["scalar"] = np.array(3, dtype=dtype)
    frame.arrays["strided"] = (np.arange(100) % 2).astype(dtype)[::3]
    frame.arrays["empty"] = np.zeros((0, 4), dtype=dtype)
    frame.metadata["same_dtype_array"] = frame.arrays["data"].copy()
    serializer = create("cbor-stream2", compression=compression)
    assert_same_message(frame, serializer.decode(serializer.encode(frame)))


def test_start_mask_is_not_duplicated_and_odd_masks_stay_exact() -> None:
    serializer = create("cbor-stream2", compression="bslz4")
    start = sample_start()
    start.arrays["mask"] = np.zeros((64, 512), dtype=bool)
    start.arrays["mask"][3, 5] = True
    message = _encode(serializer, start)
    assert len(message) < 10_000  # one compressed copy, not the bytes of two masks
    assert_same_message(start, serializer.decode([message]))
    start.arrays["mask"] = np.array([[-1, 0], [2, 3]], dtype=np.int16)  # not uint32-representable
    decoded = serializer.decode(serializer.encode(start))
    assert "pixel_mask" not in reference.decode(_encode(serializer, start))
    assert_same_message(start, decoded)


def test_native_layout_keeps_dimensions() -> None:
    frame = sample_frame()
    message = _encode(create("cbor-stream2", image_layout="native"), frame)
    raw = cbor2.loads(message[3:])
    assert list(raw["data"]["data"].value[0]) == [2, 16, 24]
    with pytest.raises(reference.SpecViolation, match="not a map of channel to 2-d array"):
        reference.decode(message)


def test_calibration_messages_use_their_own_type() -> None:
    serializer = create("cbor-stream2")
    calibration = next(m for m in sample_messages() if isinstance(m, CalibrationMessage))
    raw = cbor2.loads(_encode(serializer, calibration)[3:])
    assert raw["type"] == "calibration"
    assert_same_message(calibration, serializer.decode(serializer.encode(calibration)))


def test_batches_and_negative_events_are_refused() -> None:
    serializer = create("cbor-stream2")
    with pytest.raises(SerializerError, match="one image per message"):
        serializer.encode(FrameBatch(frames=[sample_frame(1)]))
    negative = sample_frame()
    negative.event = -1
    with pytest.raises(SerializerError, match="unsigned"):
        serializer.encode(negative)
    frame = sample_frame()
    frame.metadata["bad"] = np.array([object()], dtype=object)
    with pytest.raises(SerializerError, match="cannot encode event"):
        serializer.encode(frame)


def test_detector_messages_decode_from_spec_fields() -> None:
    mask = np.zeros((6, 8), dtype=np.uint32)
    mask[0, :] = 1  # gap row
    mask[5, 7] = 8
    serializer = create("cbor-stream2")
    start = serializer.decode([sim.start_message(7, ["threshold_1", "threshold_2"], (6, 8), mask, "uint16")])
    assert isinstance(start, StartMessage)
    assert (start.run, start.stream_id, start.detector) == (7, "series-7", "Dectris EIGER2 Si 4M")
    geometry = start.geometry
    assert geometry.beam_center_px == (1012.5, 1085.25)
    assert (geometry.pixel_size_m, geometry.distance_m, geometry.detector_shape) == (75e-6, 0.125, (6, 8))
    assert geometry.wavelength_m == pytest.approx(1e-10)
    np.testing.assert_array_equal(start.arrays["mask"], mask)
    np.testing.assert_array_equal(start.calibration.arrays["flatfield_threshold_2"], np.full((6, 8), 1.25))
    assert start.source["threshold_energy"] == {"threshold_1": 6000.0, "threshold_2": 7000.0}
    assert start.source["user_data"] == {"beamline": "X06SA"}

    low = np.arange(48, dtype=np.uint16).reshape(6, 8)
    high = (np.arange(48, dtype=np.uint32) * 70_000).reshape(6, 8)
    message = sim.image_message(7, 2, {"threshold_1": (low, "bslz4"), "threshold_2": (high, None)})
    frame = serializer.decode([message])
    assert isinstance(frame, Frame) and frame.event == 2 and frame.run == 7
    np.testing.assert_array_equal(frame.arrays["threshold_1"], low)
    np.testing.assert_array_equal(frame.arrays["threshold_2"], high)
    assert frame.metadata["start_time"] == [200_000, sim.TIME_BASE]
    assert frame.timestamp == pytest.approx(sim.SERIES_DATE.timestamp() + 0.02)

    end = serializer.decode([sim.end_message(7)])
    assert isinstance(end, EndMessage) and end.stream_id == "series-7"

    # and our encoder writes those detector fields back out when relaying the start
    relayed = reference.decode(_encode(create("cbor-stream2"), start))
    assert relayed["threshold_energy"] == start.source["threshold_energy"]
    assert relayed["count_time"] == 0.0099 and relayed["sensor_material"] == "Si"
    assert relayed["channels"] == ["threshold_1", "threshold_2"]


def test_broken_input_raises_one_line() -> None:
    serializer = create("cbor-stream2", compression="bslz4")
    frame = sample_frame()
    good = _encode(serializer, frame)
    broken = [
        good[: len(good) // 2],
        good[:20],
        b"",
        b"\xd9\xd9\xf7",
        b"\x00garbage" * 10,
        sim.MAGIC + cbor2.dumps([1, 2, 3]),
        sim.MAGIC + cbor2.dumps({"type": "flash"}),
        sim.MAGIC + cbor2.dumps({"type": "image", "image_id": 1}),
        sim.MAGIC + cbor2.dumps({"type": "image", "image_id": 1, "data": {"a": cbor2.CBORTag(76, b"ab")}}),
        sim.MAGIC
        + cbor2.dumps(
            {"type": "image", "image_id": 1, "data": {"a": cbor2.CBORTag(69, cbor2.CBORTag(56500, ["bslz4", 2, b"x"]))}}
        ),
    ]
    payload = bslz4_compress(frame.arrays["data"])
    at = good.index(payload)
    corrupt = bytearray(good)
    corrupt[at + 16 : at + 116] = bytes(range(100))  # inside the compressed image
    broken.append(bytes(corrupt))
    for bad in broken:
        with pytest.raises(SerializerError) as info:
            serializer.decode([bad])
        text = str(info.value)
        assert "\n" not in text and text.startswith("cbor-stream2"), text
    with pytest.raises(SerializerError, match="1 frame"):
        serializer.decode([good, good])
