"""stream2 source against a simulated DECTRIS detector (spec-shaped CBOR sent from a PUSH socket thread)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from pydantic import ValidationError

from photonstream.config.pipeline import PipelineConfig
from photonstream.errors import SourceError
from photonstream.frames import EncodedArray
from photonstream.pipeline import run_pipeline
from photonstream.sources.base import registry
from photonstream.sources.stream2 import Stream2Options, Stream2Source
from tests import stream2_simulator as sim

SHAPE = (24, 40)
CHANNELS = ["threshold_1", "threshold_2", "difference"]


def _mask() -> np.ndarray:
    mask = np.zeros(SHAPE, dtype=np.uint32)
    mask[:, 19:21] = 1  # module gap
    mask[3, 7] = 2  # dead pixel
    return mask


def _images(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "threshold_1": rng.poisson(3.0, SHAPE).astype(np.uint16),
            "threshold_2": (rng.poisson(2.0, SHAPE) * 70_000).astype(np.uint32),
            "difference": rng.poisson(1.0, SHAPE).astype(np.uint8),
        }
        for _ in range(count)
    ]


CODECS = {"threshold_1": "bslz4", "threshold_2": "bslz4", "difference": "lz4"}


def _series(series_id: int, images: list[dict[str, np.ndarray]], end: bool = True) -> list[bytes]:
    messages = [sim.start_message(series_id, CHANNELS, SHAPE, _mask(), "uint16")]
    for image_id, arrays in enumerate(images):
        data = {c: (a, CODECS[c]) for c, a in arrays.items()}
        messages.append(sim.image_message(series_id, image_id, data))
    if end:
        messages.append(sim.end_message(series_id))
    return messages


@pytest.fixture
def detector() -> Iterator[list[sim.SimulatedDetector]]:
    started: list[sim.SimulatedDetector] = []
    yield started
    for d in started:
        d.stop()


def _source(detector: list[sim.SimulatedDetector], messages: list[bytes], **options: object) -> Stream2Source:
    simulated = sim.SimulatedDetector(messages)
    detector.append(simulated)
    simulated.start()
    opts = {"idle_timeout_s": 5.0, "start_timeout_s": 5.0, **options}
    return Stream2Source(Stream2Options(address=simulated.address, **opts))


def test_series_arrives_bit_exact_with_geometry_and_mask(detector: list[sim.SimulatedDetector]) -> None:
    images = _images(3)
    stale = sim.image_message(6, 41, {"threshold_1": (images[0]["threshold_1"], "bslz4")})
    source = _source(detector, [stale, *_series(7, images)])
    try:
        info = source.open()
        frames = list(source.events())
    finally:
        source.close()
    assert info.detector == "Dectris EIGER2 Si 4M"
    assert info.geometry.beam_center_px == (1012.5, 1085.25)
    assert info.geometry.pixel_size_m == 75e-6
    assert info.geometry.distance_m == 0.125
    assert info.geometry.photon_energy_ev == pytest.approx(12398.419843320026)
    assert info.geometry.detector_shape == SHAPE
    np.testing.assert_array_equal(info.arrays["mask"], _mask())
    assert info.expected_events == 3
    assert info.details["channels"] == CHANNELS and info.details["skipped_before_start"] == 1
    assert info.details["threshold_energy"]["threshold_2"] == 7000.0
    assert [f.event for f in frames] == [0, 1, 2]
    for frame, sent in zip(frames, images, strict=True):
        assert set(frame.arrays) == set(CHANNELS)
        for channel, array in sent.items():
            got = frame.array(channel)
            assert got.dtype == array.dtype and got.tobytes() == array.tobytes(), channel
        assert frame.metadata["series_id"] == 7
        assert frame.timestamp == pytest.approx(sim.SERIES_DATE.timestamp() + frame.event * 0.01)


def test_channels_and_max_images_select(detector: list[sim.SimulatedDetector]) -> None:
    images = _images(4, seed=1)
    source = _source(detector, _series(3, images), channels=["threshold_2"], max_images=2)
    try:
        info = source.open()
        frames = list(source.events())
    finally:
        source.close()
    assert info.expected_events == 2 and info.details["channels"] == ["threshold_2"]
    assert len(frames) == 2
    for frame, sent in zip(frames, images, strict=False):
        assert list(frame.arrays) == ["threshold_2"]
        np.testing.assert_array_equal(frame.arrays["threshold_2"], sent["threshold_2"])


def test_series_option_skips_other_series(detector: list[sim.SimulatedDetector]) -> None:
    first, second = _images(2, seed=2), _images(2, seed=3)
    source = _source(detector, [*_series(4, first), *_series(5, second)], series=5)
    try:
        source.open()
        frames = list(source.events())
    finally:
        source.close()
    assert len(frames) == 2 and all(f.metadata["series_id"] == 5 for f in frames)
    np.testing.assert_array_equal(frames[1].arrays["difference"], second[1]["difference"])


def test_encoded_payloads_kept_without_decompression(detector: list[sim.SimulatedDetector]) -> None:
    images = _images(1, seed=4)
    source = _source(detector, _series(1, images), decompress=False)
    try:
        source.open()
        (frame,) = list(source.events())
    finally:
        source.close()
    encoded = frame.arrays["threshold_1"]
    assert isinstance(encoded, EncodedArray) and encoded.codec == "bslz4" and encoded.dtype == "<u2"
    assert frame.arrays["difference"].codec == "lz4"  # type: ignore[union-attr]
    for channel in CHANNELS:
        np.testing.assert_array_equal(frame.array(channel), images[0][channel])


def test_missing_end_is_an_idle_timeout(detector: list[sim.SimulatedDetector]) -> None:
    source = _source(detector, _series(2, _images(1), end=False), idle_timeout_s=0.3)
    try:
        source.open()
        events = source.events()
        assert next(events).event == 0
        with pytest.raises(SourceError, match=r"no message from tcp://127\.0\.0\.1:\d+ for 0\.3 s .*no end message"):
            next(events)
    finally:
        source.close()


def test_no_start_and_unknown_channel_and_garbage(detector: list[sim.SimulatedDetector]) -> None:
    silent = _source(detector, [], start_timeout_s=0.2)
    with pytest.raises(SourceError, match="no start message"):
        silent.open()
    silent.close()
    wrong = _source(detector, _series(1, _images(1)), channels=["threshold_9"])
    with pytest.raises(SourceError, match="'threshold_9' is not sent by the detector"):
        wrong.open()
    wrong.close()
    garbage = _source(detector, [sim.MAGIC + b"\xbf\x01"])
    with pytest.raises(SourceError, match="malformed message"):
        garbage.open()
    garbage.close()


def test_options_validate() -> None:
    with pytest.raises(ValidationError, match="not a ZeroMQ endpoint"):
        Stream2Options(address="localhost:31001")
    with pytest.raises(ValidationError):
        Stream2Options(max_images=0)
    assert Stream2Options().address == "tcp://127.0.0.1:31001"
    assert registry.get("stream2") is Stream2Source


def test_pipeline_relays_a_detector_series(detector: list[sim.SimulatedDetector]) -> None:
    simulated = sim.SimulatedDetector(_series(9, _images(3, seed=5)))
    detector.append(simulated)
    simulated.start()
    config = PipelineConfig.model_validate(
        {
            "source": {"type": "stream2", "address": simulated.address, "idle_timeout_s": 5},
            "serializer": {"type": "cbor-stream2", "compression": "bslz4"},
            "handlers": [{"type": "null"}],
        }
    )
    end = run_pipeline(config)
    assert end.reason == "completed" and end.events_sent == 3
