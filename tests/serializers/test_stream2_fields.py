"""cbor-stream2 output read by a decoder written from the DECTRIS spec: every start and image field the source
knows is present with the spec's type, only declared channels travel as image data (a vetoed image is NODATA
pixels), and a relayed detector keeps its own fields, per channel. The pipelines are real: a simulated EIGER
PUSHes spec-built messages, `stream2` → steps → `cbor-stream2` → `zmq-push` → a PULL socket here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import cbor2
import numpy as np
import pytest
import zmq

from photonstream import _stream2
from photonstream.config.pipeline import validate_pipeline
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.pipeline import Pipeline
from photonstream.processing.base import registry as steps
from photonstream.serializers.base import create
from tests import stream2_simulator as sim
from tests.serializers import stream2_reference_decoder as reference

SHAPE = (32, 48)
START_FIELDS = {  # every start field of the spec a detector relay can fill
    "arm_date", "beam_center_x", "beam_center_y", "channels", "count_time", "countrate_correction_enabled",
    "countrate_correction_lookup_table", "detector_description", "detector_serial_number", "detector_translation",
    "flatfield", "flatfield_enabled", "frame_time", "goniometer", "image_dtype", "image_size_x", "image_size_y",
    "incident_energy", "incident_wavelength", "number_of_images", "pixel_mask", "pixel_mask_enabled",
    "pixel_size_x", "pixel_size_y", "saturation_value", "sensor_material", "sensor_thickness", "series_id",
    "series_unique_id", "threshold_energy", "user_data", "virtual_pixel_interpolation_enabled",
}  # fmt: skip
IMAGE_FIELDS = {"data", "image_id", "real_time", "series_date", "series_id", "series_unique_id", "start_time"}
IMAGE_FIELDS |= {"stop_time", "user_data"}
VETO_STEPS = [
    {"type": "hitfinder", "algorithm": "numpy", "min_peaks": 5, "threshold": 50, "min_snr": 3},
    {"type": "thumbnail", "size": 8},
    {"type": "veto"},
]


def _image(image_id: int, dtype: str) -> np.ndarray:
    """Odd images are hits: a dozen bright spots on a faint background; even ones only the background."""
    rng = np.random.default_rng(image_id)
    image = rng.poisson(0.2, SHAPE).astype(dtype)
    if image_id % 2:
        for row, col in zip(range(3, 30, 4), range(3, 45, 6), strict=False):
            image[row : row + 2, col : col + 2] = 900 + image_id
        image[20:22, 5:7] = image[5:7, 30:32] = image[26:28, 40:42] = image[12:14, 20:22] = 700
    return image


def _detector(channels: list[str], dtype: str, count: int, **start: Any) -> sim.SimulatedDetector:
    mask = np.zeros(SHAPE, np.uint32)
    mask[:, 23:25] = 1
    start.setdefault("countrate_table", np.arange(512, dtype=np.uint32))
    messages = [sim.start_message(11, channels, SHAPE, mask, dtype, **start)]
    for image_id in range(count):
        data = {c: (_image(image_id, dtype) + i, "bslz4") for i, c in enumerate(channels)}
        messages.append(sim.image_message(11, image_id, data, user_data={"shot": image_id, "gate": "A"}))
    messages.append(sim.end_message(11))
    detector = sim.SimulatedDetector(messages)
    detector.start()
    return detector


@pytest.fixture
def pull() -> Iterator[tuple[zmq.Socket, str]]:
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    yield socket, f"tcp://127.0.0.1:{port}"
    socket.close(linger=0)
    context.term()


def _collect(pull: tuple[zmq.Socket, str], config: dict[str, Any]) -> list[bytes]:
    """Run the pipeline into the PULL socket here; the messages it sent, start to end."""
    socket, endpoint = pull
    config = {**config, "handlers": [{"type": "zmq-push", "address": endpoint, "bind": False}]}
    end = Pipeline(validate_pipeline(config)).run()
    assert end.reason == "completed", end.error
    messages = []
    while socket.poll(5000):
        messages.append(socket.recv())
        if reference.decode(messages[-1])["type"] == "end":
            return messages
    raise AssertionError(f"no end message after {len(messages)} messages")


def _relay(pull: tuple[zmq.Socket, str], detector: sim.SimulatedDetector, steps: list, **serializer: Any) -> list:
    source = {"type": "stream2", "address": detector.address, "idle_timeout_s": 10}
    try:
        return _collect(pull, {"source": source, "steps": steps, "serializer": {"type": "cbor-stream2", **serializer}})
    finally:
        detector.stop()


@pytest.mark.parametrize("steps", ["plain", "veto"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("compression", ["none", "bslz4", "lz4"])
def test_every_field_has_the_spec_type(pull: Any, compression: str, dtype: str, steps: str) -> None:
    raw = _relay(pull, _detector(["data"], dtype, 6), VETO_STEPS if steps == "veto" else [], compression=compression)
    decoded = [reference.decode(m) for m in raw]  # raises on any field of the wrong type
    start, images, end = decoded[0], decoded[1:-1], decoded[-1]
    assert set(start) >= START_FIELDS, sorted(START_FIELDS - set(start))
    assert start["image_dtype"] == dtype and start["number_of_images"] == 3  # the simulated detector's own
    assert [i["image_id"] for i in images] == list(range(6)) and end["type"] == "end"
    ours = create("cbor-stream2")
    assert isinstance(ours.decode([raw[0]]), StartMessage)
    for image, message in zip(images, raw[1:-1], strict=True):
        assert set(image) >= IMAGE_FIELDS, sorted(IMAGE_FIELDS - set(image))
        assert list(image["data"]) == start["channels"] == ["data"]  # never an undeclared thumbnail
        assert image["user_data"]["shot"] == image["image_id"]  # the detector's appendix, ours beside it
        pixels = image["data"]["data"]
        assert pixels.dtype == np.dtype(dtype) and pixels.shape == SHAPE
        frame = ours.decode([message])
        assert isinstance(frame, Frame)
        vetoed = steps == "veto" and image["image_id"] % 2 == 0
        if vetoed:  # a DECTRIS reader sees an image of NODATA pixels; photonstream sees the frame as it was
            assert (pixels == np.iinfo(dtype).max).all()
            assert frame.metadata["vetoed"] is True and "data" not in frame.arrays
            payload = cbor2.loads(message[3:])["data"]["data"].value[1].value  # tag 40 > typed array > content
            assert payload.tag == 56500 and payload.value[0] == "bslz4"  # a few bytes, whatever the option
            assert len(payload.value[2]) < pixels.nbytes // 8
        else:
            np.testing.assert_array_equal(pixels, _image(image["image_id"], dtype))
            np.testing.assert_array_equal(frame.arrays["data"], pixels)
        if steps == "veto":
            assert (
                frame.arrays["thumbnail"].shape == (8, 8) and "thumbnail" in image["user_data"]["photonstream"]["extra"]
            )
    assert isinstance(ours.decode([raw[-1]]), EndMessage)


def test_a_relay_keeps_every_detector_field_per_channel(pull: Any) -> None:
    channels = ["threshold_1", "threshold_2", "difference"]
    masks = {c: np.zeros(SHAPE, np.uint32) for c in channels}
    masks["threshold_1"][0, :] = 1
    masks["threshold_2"][:, 0] = 2
    masks["difference"][5, 5] = 4
    table = np.arange(1000, dtype=np.uint32) * 3
    detector = _detector(channels, "uint16", 3, masks=masks, countrate_table=table)
    sent = [reference.decode(m) for m in detector.messages]
    raw = _relay(pull, detector, [], compression="bslz4")
    out = [reference.decode(m) for m in raw]
    theirs, ours = sent[0], out[0]
    for key, value in theirs.items():
        if key in ("pixel_mask", "flatfield"):
            assert set(ours[key]) == set(channels)
            for channel in channels:
                np.testing.assert_array_equal(ours[key][channel], value[channel])
        elif key == "countrate_correction_lookup_table":
            np.testing.assert_array_equal(ours[key], table)
        elif key == "user_data":
            assert {k: v for k, v in ours[key].items() if k != "photonstream"} == value
            assert ours[key]["photonstream"]["version"] == 2
        else:
            assert ours[key] == value, key
    for before, after in zip(sent[1:], out[1:], strict=True):
        for key, value in before.items():
            if key == "data":
                for channel in channels:
                    np.testing.assert_array_equal(after["data"][channel], value[channel])
            elif key == "user_data":
                assert {k: v for k, v in after[key].items() if k != "photonstream"} == value
            else:
                assert after[key] == value, key
    start = create("cbor-stream2").decode([raw[0]])
    assert isinstance(start, StartMessage)
    for channel in channels:  # our decoder keeps the three masks apart too
        np.testing.assert_array_equal(start.arrays[f"mask_{channel}"], masks[channel])


def test_sources_that_are_not_detectors_fill_what_they_know(pull: Any) -> None:
    """A synthetic detector paced at 200 Hz: dtype, count, exposure and timing from the source, the rest absent."""
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "dtype": "uint32"}
    source |= {"events": 4, "rate_hz": 200, "count_time_s": 0.004}
    sent = _collect(pull, {"source": source, "serializer": {"type": "cbor-stream2"}})
    decoded = [reference.decode(m) for m in sent]
    start, images = decoded[0], decoded[1:-1]
    assert start["image_dtype"] == "uint32" and start["number_of_images"] == 4
    assert start["count_time"] == 0.004 and start["frame_time"] == 0.005
    assert start["saturation_value"] == 2**32 - 2
    assert start["flatfield_enabled"] is False and start["countrate_correction_enabled"] is False
    assert "detector_serial_number" not in start  # a simulation has none: omitted, not invented
    series_date = images[0]["series_date"]
    assert series_date >= start["arm_date"]
    starts = [i["start_time"][0] / i["start_time"][1] for i in images]
    assert starts == sorted(starts) and 0.004 < starts[-1] - starts[0] < 1.0  # paced at 200 Hz
    for image in images:
        assert image["series_date"] == series_date and image["real_time"] == [4_000_000, 1_000_000_000]
        assert image["stop_time"][0] - image["start_time"][0] == 4_000_000


def test_steps_that_change_the_pixels_change_the_declared_dtype() -> None:
    def start_after(step: dict[str, Any]) -> dict[str, Any]:
        start = StartMessage(stream_id="s", source={"image_dtype": "uint16", "saturation_value": 65534})
        config = {"source": {"type": "synthetic-diffraction"}, "steps": [step], "handlers": [{"type": "null"}]}
        options = validate_pipeline(config).steps[0]
        steps.create(options).setup(start)
        return _stream2.loads(create("cbor-stream2").encode(start)[0])

    calibrated = start_after({"type": "calibrate", "pedestal": 1.0})
    assert "image_dtype" not in calibrated and "saturation_value" not in calibrated  # float32 has no spec name
    assert start_after({"type": "bin", "factor": 2})["image_dtype"] == "uint32"
    assert start_after({"type": "roi", "box": [0, 8, 0, 8]})["image_dtype"] == "uint16"
