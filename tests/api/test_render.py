"""The dashboard's pictures and samples: frame assembly, downsampling and peak circles, the powder profile, and a
stream watch fed real source messages (diffraction and TOF) without a buffer."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from photonstream.api.monitor import StreamWatch
from photonstream.api.ui.render import (
    COLORMAP,
    PEAK_COLOR,
    VERDICT_COLORS,
    PowderProfile,
    frame_picture,
    layout_of,
    thumbnail_strip,
)
from photonstream.frames import EndMessage, Frame, Geometry, Message, StartMessage
from photonstream.sources.base import registry as source_registry


def messages_of(source_options: dict[str, Any]) -> list[Message]:
    """The start message, frames and end message a pipeline would emit for this source (no steps)."""
    source = source_registry.create(source_registry.get(source_options["type"]).Options(**source_options))
    info = source.open()
    start = StartMessage(stream_id="s", experiment="exp", run=1, detector=info.detector, geometry=info.geometry,
                         calibration=info.calibration, arrays=dict(info.arrays), source=dict(info.details))  # fmt: skip
    frames = list(source.events())
    source.close()
    for seq, frame in enumerate(frames):
        frame.seq, frame.created_ns = seq, time.time_ns()
    return [start, *frames, EndMessage("s", events_sent=len(frames))]


def test_modules_tile_and_peaks_are_circled() -> None:
    data = np.zeros((2, 32, 40), dtype=np.uint16)
    data[1, 5, 7] = 5000  # module 1: flattened slow = 32 + 5
    layout = layout_of(None, data.shape)  # no start message: two modules side by side
    picture = frame_picture(data, np.array([[32 + 5, 7, 5000.0]]), layout)
    image = Image.open(io.BytesIO(picture.png)).convert("RGB")
    assert (picture.width, picture.height) == image.size == (80, 32) and picture.peaks_drawn == 1
    assert image.getpixel((40 + 7, 5)) == tuple(COLORMAP[255])  # the bright pixel, at the top of the map
    assert image.getpixel((40 + 7 + 4, 5)) == PEAK_COLOR  # on the circle around it
    assert image.getpixel((7, 5)) == tuple(COLORMAP[0])  # module 0 is dark there


def test_large_frames_shrink_keeping_their_spots() -> None:
    data = np.zeros((1200, 1000), dtype=np.float32)
    data[601, 433] = 100.0
    picture = frame_picture(data, None, layout_of(None, data.shape), max_size=512)
    image = Image.open(io.BytesIO(picture.png)).convert("RGB")
    assert picture.factor == 3 and image.size == (334, 400)
    assert image.getpixel((433 // 3, 601 // 3)) == tuple(COLORMAP[255])


def test_layout_from_the_start_message_keeps_module_gaps() -> None:
    start, frame = messages_of({"type": "synthetic-diffraction", "detector": "custom", "shape": [4, 20, 30],
                                "module_grid": [2, 2], "module_gap_px": 6, "events": 1})[:2]  # fmt: skip
    layout = layout_of(start, frame.arrays["data"].shape)
    assert layout.assembled_shape == (2 * 20 + 6, 2 * 30 + 6)
    picture = frame_picture(frame.arrays["data"], None, layout)
    assert (picture.width, picture.height) == (66, 46)


def test_powder_profile_puts_a_ring_at_its_q() -> None:
    geometry = Geometry(pixel_size_m=100e-6, distance_m=0.1, beam_center_px=(50.0, 50.0), photon_energy_ev=9500.0)
    start = StartMessage(stream_id="s", geometry=geometry)
    slow, fast = np.mgrid[0:101, 0:101]
    ring = np.where(np.abs(np.hypot(slow - 50, fast - 50) - 30) < 0.5, 100.0, 1.0)
    profile = PowderProfile(layout_of(start, ring.shape), bins=100)
    profile.add(ring)
    profile.add(ring)
    wavelength_a = 12398.41984 / 9500.0
    expected = 4 * np.pi * np.sin(np.arctan(30 * 100e-6 / 0.1) / 2) / wavelength_a
    peak = profile.q[np.argmax(profile.intensity())]
    assert profile.frames == 2 and abs(peak - expected) <= profile.edges[1] - profile.edges[0]
    with pytest.raises(ValueError, match="pixels"):
        profile.add(np.zeros((3, 3)))


def watch_of(messages: list[Message]) -> StreamWatch:
    watch = StreamWatch("stream-1", ["exp/1/s"], lambda _address, _context: iter(messages), sample_hz=1000.0)
    deadline = time.monotonic() + 20
    while watch.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not watch.alive and not watch.error, watch.error
    return watch


def test_watch_samples_diffraction_frames() -> None:
    messages = messages_of({"type": "synthetic-diffraction", "detector": "custom", "shape": [48, 48], "events": 5,
                            "hit_fraction": 1.0})  # fmt: skip
    frames = [m for m in messages if isinstance(m, Frame)]
    frames[-1].metadata.update(hit=True, peaks=np.array([[10.0, 12.0, 50.0]]))
    snapshot = watch_of(messages).snapshot()
    assert snapshot["sampled"] == 5 and snapshot["ended"] and snapshot["latency"]["count"] == 5
    assert snapshot["frame"]["event"] == frames[-1].event and snapshot["frame"]["peaks"] == 1
    assert snapshot["hit_fraction"] == 1.0 and snapshot["powder"]["frames"] == 5
    assert snapshot["tof"] is None


def test_watch_histograms_tof_waveforms() -> None:
    messages = messages_of({"type": "synthetic-tof", "events": 20, "seed": 2})
    watch = watch_of(messages)
    snapshot = watch.snapshot()
    assert snapshot["frame"] is None and snapshot["powder"] is None  # waveforms are no image
    counts = snapshot["tof"]["counts"]
    assert len(counts) == len(snapshot["tof"]["mq"]) and sum(counts) > 0
    assert watch.picture() is None


def test_thumbnail_strip_keeps_its_size_puts_the_newest_right_and_marks_verdicts() -> None:
    spot = np.zeros((6, 4), np.uint16)
    spot[2, 1] = 500
    one = Image.open(io.BytesIO(thumbnail_strip([spot], [True], slots=3).png)).convert("RGB")
    three = thumbnail_strip([spot, np.ones((6, 4), np.uint16), spot], [None, False, True], slots=3)
    assert one.size == (three.width, three.height) == (3 * 4 + 2 * 2, 6 + 2 + 4)  # same size however many came
    assert one.getpixel((2 * 6 + 1, 2)) == tuple(COLORMAP[255])  # the one thumbnail in the rightmost slot
    assert one.getpixel((1, 2)) != tuple(COLORMAP[255])  # the empty slots hold no picture
    assert one.getpixel((2 * 6, 10)) == VERDICT_COLORS[True]
    strip = Image.open(io.BytesIO(three.png)).convert("RGB")
    assert [strip.getpixel((slot * 6, 10)) for slot in range(3)] == [VERDICT_COLORS[v] for v in (None, False, True)]
    # one scale for the strip: a faint thumbnail stays faint next to a bright one
    faint = np.zeros((6, 4), np.uint16)
    faint[1, 1] = 5
    shared = Image.open(io.BytesIO(thumbnail_strip([faint, spot], [False, True], slots=2).png)).convert("RGB")
    alone = Image.open(io.BytesIO(thumbnail_strip([faint], [False], slots=1).png)).convert("RGB")
    assert alone.getpixel((1, 1)) == tuple(COLORMAP[255]) and sum(shared.getpixel((1, 1))) < sum(alone.getpixel((1, 1)))
    with pytest.raises(ValueError, match="as many of each"):
        thumbnail_strip([spot], [True, False], slots=3)
