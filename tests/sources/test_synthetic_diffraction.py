"""synthetic-diffraction: determinism, presets, hit fraction, Poisson background, Ewald geometry of the spots,
the structure-factor model, raw ADU frames, option errors, sharding and a run through the real pipeline."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError
from photonstream.pipeline import Pipeline
from photonstream.sources.base import Shard
from photonstream.sources.synthetic_diffraction import (
    SyntheticDiffraction,
    SyntheticDiffractionOptions,
    structure_model_for,
)

# A small two-module detector and a 4 Å limit keep most tests quick (the presets get their own tests).
SMALL = {
    "detector": "custom",
    "shape": [2, 128, 160],
    "pixel_size_m": 200e-6,
    "module_grid": [1, 2],
    "resolution_limit_a": 4.0,
}


def source(**options: Any) -> SyntheticDiffraction:
    return SyntheticDiffraction(SyntheticDiffractionOptions(**options))


def frames(src: SyntheticDiffraction) -> list:
    src.open()
    return list(src.events())


def source_error(**options: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_pipeline({"source": {"type": "synthetic-diffraction", **options}, "handlers": [{"type": "null"}]})
    message = str(info.value)
    assert "\n" not in message
    return message


def test_same_seed_gives_identical_frames_and_another_seed_does_not() -> None:
    first = frames(source(**SMALL, events=6, hit_fraction=0.5, seed=5))
    again = frames(source(**SMALL, events=6, hit_fraction=0.5, seed=5))
    other = frames(source(**SMALL, events=6, hit_fraction=0.5, seed=6))
    assert any(f.metadata["true_hit"] for f in first)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.arrays["data"], b.arrays["data"])
        assert a.metadata["true_hit"] == b.metadata["true_hit"]
        np.testing.assert_array_equal(a.metadata["spots"], b.metadata["spots"])
        np.testing.assert_array_equal(a.metadata["hkl"], b.metadata["hkl"])
    assert any(not np.array_equal(a.arrays["data"], c.arrays["data"]) for a, c in zip(first, other, strict=True))


@pytest.mark.parametrize(
    ("options", "shape", "dtype", "pixel_size", "assembled"),
    [
        ({"detector": "epix10k2m"}, (16, 352, 384), np.uint16, 100e-6, (4 * 352 + 30, 4 * 384 + 30)),
        ({"detector": "jungfrau4m"}, (8, 512, 1024), np.uint16, 75e-6, (4 * 512 + 36, 2 * 1024 + 12)),
        ({"detector": "eiger16m"}, (4362, 4148), np.uint32, 75e-6, (4362, 4148)),
        (
            {"detector": "custom", "shape": [3, 100, 80], "dtype": "float32", "module_grid": [1, 3]}
            | {"module_gap_px": 5, "pixel_size_m": 800e-6},
            (3, 100, 80),
            np.float32,
            800e-6,
            (100, 250),
        ),
    ],
)
def test_presets_give_their_shape_dtype_and_geometry(options, shape, dtype, pixel_size, assembled) -> None:
    src = source(**options, events=1, hit_fraction=1.0, seed=2)
    info = src.open()
    [frame] = list(src.events())
    data = frame.arrays["data"]
    assert data.shape == shape and data.dtype == dtype
    assert info.geometry.detector_shape == shape
    assert info.geometry.pixel_size_m == pytest.approx(pixel_size)
    # Default beam centre: the middle of the assembled plane, as (x = fast, y = slow).
    assert info.geometry.beam_center_px == pytest.approx(((assembled[1] - 1) / 2, (assembled[0] - 1) / 2))
    assert info.details["layout"]["assembled_shape"] == list(assembled)
    assert info.details["unit_cell"] == [79.1, 79.1, 37.9, 90.0, 90.0, 90.0]
    assert info.details["space_group"] == "P43212" and info.details["seed"] == 2
    assert frame.metadata["true_hit"] is True and frame.metadata["orientation"].shape == (3, 3)
    assert len(frame.metadata["spots"]) > 20  # a lysozyme still at 2 Å shows tens to hundreds of spots


def test_hit_fraction_is_honoured_statistically() -> None:
    src = source(detector="custom", shape=[32, 32], events=400, hit_fraction=0.25, seed=9, resolution_limit_a=8.0)
    hits = sum(f.metadata["true_hit"] for f in frames(src))
    assert abs(hits - 100) < 4 * np.sqrt(400 * 0.25 * 0.75)
    assert not any(f.metadata["true_hit"] for f in frames(source(**SMALL, events=30, hit_fraction=0.0)))
    assert all(f.metadata["true_hit"] for f in frames(source(**SMALL, events=5, hit_fraction=1.0)))


def test_misses_are_poisson_background_only() -> None:
    mean = 0.05
    src = source(
        detector="epix10k2m", events=3, hit_fraction=0.0, seed=4, background_photons=mean, resolution_limit_a=8
    )
    misses = frames(src)
    counts = np.stack([f.arrays["data"] for f in misses]).ravel().astype(np.int64)
    n = counts.size
    for frame in misses:
        assert "orientation" not in frame.metadata
        assert frame.metadata["spots"].shape == (0, 3) and frame.metadata["hkl"].shape == (0, 3)
    assert abs(counts.mean() - mean) < 6 * np.sqrt(mean / n)
    assert counts.var() == pytest.approx(mean, rel=0.01)
    for k in range(4):
        expected = np.exp(-mean) * mean**k / np.prod(np.arange(1, k + 1))
        observed = np.count_nonzero(counts == k)
        assert abs(observed - n * expected) < 6 * np.sqrt(n * expected) + 1, k
    # No position dependence: each module sees the same mean.
    per_module = np.stack([f.arrays["data"] for f in misses]).mean(axis=(0, 2, 3))
    assert np.all(np.abs(per_module - mean) < 6 * np.sqrt(mean / (3 * 352 * 384)))


def test_background_bank_gives_poisson_frames_of_their_own_with_the_spots_on_top() -> None:
    mean = 0.05
    options = {"detector": "epix10k2m", "seed": 4, "background_photons": mean, "resolution_limit_a": 4.0}
    misses = frames(source(**options, events=3, hit_fraction=0.0, background_bank=2))
    counts = np.stack([f.arrays["data"] for f in misses]).ravel().astype(np.int64)
    assert abs(counts.mean() - mean) < 6 * np.sqrt(mean / counts.size)
    assert counts.var() == pytest.approx(mean, rel=0.01)
    assert not np.array_equal(misses[0].arrays["data"], misses[1].arrays["data"])  # windows at different offsets
    again = frames(source(**options, events=3, hit_fraction=0.0, background_bank=2))
    assert all(np.array_equal(a.arrays["data"], b.arrays["data"]) for a, b in zip(misses, again, strict=True))
    hit = source(**options, events=1, hit_fraction=1.0, background_bank=2, spot_photons=300.0).frame(0)
    spots = hit.metadata["spots"]
    bright = spots[spots[:, 2] >= 50]
    centres = hit.arrays["data"].reshape(-1, 384)[np.rint(bright[:, 0]).astype(int), np.rint(bright[:, 1]).astype(int)]
    assert len(bright) > 20 and np.all(centres >= 5)  # the recorded spots are in the frame, on the bank's noise


def test_spots_lie_where_the_ewald_construction_puts_them() -> None:
    src = source(detector="epix10k2m", events=1, hit_fraction=1.0, seed=21, background_photons=0.0)
    info = src.open()
    [frame] = list(src.events())
    spots, hkl, rotation = frame.metadata["spots"], frame.metadata["hkl"], frame.metadata["orientation"]
    assert len(spots) > 50
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)

    # Independently: tetragonal cell -> B = diag(1/a, 1/b, 1/c); k0 = (0, 0, 1/λ) along the beam.
    inv_wavelength = 9500.0 / 12398.41984
    q = (rotation @ (np.diag([1 / 79.1, 1 / 79.1, 1 / 37.9]) @ hkl.T.astype(np.float64))).T
    k = q + np.array([0.0, 0.0, inv_wavelength])
    # On the Ewald sphere within three widths of the partiality profile (mosaicity 0.1°, bandwidth 0.2 %, 1 µm).
    q_len = np.linalg.norm(q, axis=1)
    width = np.sqrt((q_len * np.radians(0.1)) ** 2 + (0.5 * q_len**2 * 0.002 / inv_wavelength) ** 2 + 1e-8)
    assert np.all(np.abs(np.linalg.norm(k, axis=1) - inv_wavelength) < 3 * width)
    distance_px = 0.1 / 100e-6
    centre_x, centre_y = (4 * 384 + 30 - 1) / 2, (4 * 352 + 30 - 1) / 2
    fast = centre_x + distance_px * k[:, 0] / k[:, 2]
    slow = centre_y + distance_px * k[:, 1] / k[:, 2]
    # The 4 x 4 module grid with 10 empty pixels between modules, flattened as module * 352 + row.
    grid_row, grid_col = np.floor((slow + 0.5) / 362), np.floor((fast + 0.5) / 394)
    module = grid_row * 4 + grid_col
    flat_slow = module * 352 + slow - grid_row * 362
    flat_fast = fast - grid_col * 394
    np.testing.assert_allclose(spots[:, 0], flat_slow, atol=1e-3)
    np.testing.assert_allclose(spots[:, 1], flat_fast, atol=1e-3)
    assert info.geometry.beam_center_px == pytest.approx((centre_x, centre_y))

    # The recorded photons are in the image around each spot (no background here).
    data = frame.arrays["data"].reshape(16 * 352, 384).astype(np.int64)
    brightest = spots[np.argmax(spots[:, 2])]
    s, f = np.rint(brightest[:2]).astype(int)
    window = data[max(s - 4, 0) : s + 5, max(f - 4, 0) : f + 5]
    assert window.sum() >= brightest[2] > 20
    assert data.sum() == pytest.approx(spots[:, 2].sum(), rel=0.05)


def test_structure_model_has_the_space_group_symmetry_and_is_rebuilt_from_details() -> None:
    options = SyntheticDiffractionOptions(seed=3)
    model = structure_model_for(options)
    absent = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 5], [1, 0, 0], [0, 3, 0], [5, 0, 0]])
    present = np.array([[0, 0, 4], [0, 0, 8], [2, 0, 0], [0, 4, 0]])
    scale = model.intensities(np.array([[3, 5, 7]]))[0]
    assert np.all(model.intensities(absent) < 1e-9 * scale)
    assert np.all(model.intensities(present) > 1e-6 * scale)
    rng = np.random.default_rng(0)
    hkl = rng.integers(-15, 16, size=(50, 3))
    h, k, l = hkl.T  # noqa: E741
    intensity = model.intensities(hkl)
    for equivalent in ([-h, -k, -l], [k, h, -l], [-k, h, l], [h, -k, -l]):  # Laue class 4/mmm and Friedel
        np.testing.assert_allclose(model.intensities(np.stack(equivalent, axis=1)), intensity, rtol=1e-9, atol=1e-6)
    rebuilt = structure_model_for(SyntheticDiffractionOptions(seed=3, events=5))
    np.testing.assert_array_equal(rebuilt.intensities(hkl), intensity)
    assert not np.allclose(structure_model_for(SyntheticDiffractionOptions(seed=4)).intensities(hkl), intensity)


def test_raw_adu_frames_are_pedestal_plus_gain_times_photons() -> None:
    photons = frames(source(**SMALL, events=3, hit_fraction=0.7, seed=8))
    raw_source = source(**SMALL, events=3, hit_fraction=0.7, seed=8, raw_adu=True)
    raw = frames(raw_source)
    pedestal, gain = raw_source.pedestal, raw_source.gain
    assert pedestal is not None and gain is not None
    assert pedestal.shape == gain.shape == (2, 128, 160)
    assert abs(float(pedestal.mean()) - 1000.0) < 5 and abs(float(gain.mean()) - 40.0) < 1
    assert source(**SMALL, seed=8).pedestal is None
    np.testing.assert_array_equal(source(**SMALL, seed=8, raw_adu=True).gain, gain)
    for p, r in zip(photons, raw, strict=True):
        expected = np.clip(np.rint(pedestal + gain * p.arrays["data"].astype(np.float32)), 0, 65535)
        np.testing.assert_array_equal(r.arrays["data"], expected.astype(np.uint16))
        recovered = (r.arrays["data"] - pedestal) / gain
        unsaturated = r.arrays["data"] < 65535
        np.testing.assert_allclose(recovered[unsaturated], p.arrays["data"][unsaturated], atol=0.05)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"hit_fraction": 1.5}, "source.hit_fraction: Input should be less than or equal to 1"),
        ({"detector": "custom"}, "needs shape"),
        ({"detector": "epix10k2m", "shape": [4, 4]}, "shape only apply to detector 'custom'"),
        ({"unit_cell": [79.1, 70.0, 37.9, 90, 90, 90]}, "needs a tetragonal cell"),
        ({"unit_cell": [79.1, 79.1, -1, 90, 90, 90]}, "positive lengths"),
        ({"detector": "hubble"}, "source.detector"),
        ({"events": -1}, "source.events"),
        ({"resolution_limit_a": 0.5, "unit_cell": [300, 300, 300, 90, 90, 90], "space_group": "P1"}, "reflections"),
        ({"bogus": 1}, "source.bogus: unknown option"),
    ],
)
def test_bad_options_are_rejected_with_one_clear_line(options: dict, expected: str) -> None:
    assert expected in source_error(**options)


def test_shards_split_events_and_each_event_is_the_same_frame() -> None:
    whole = frames(source(**SMALL, events=6, hit_fraction=0.5, seed=1))
    src = source(**SMALL, events=6, hit_fraction=0.5, seed=1)
    src.set_shard(Shard(rank=1, size=2))
    assert src.open().expected_events == 3
    part = list(src.events())
    assert [f.event for f in part] == [1, 3, 5]
    for frame in part:
        np.testing.assert_array_equal(frame.arrays["data"], whole[frame.event].arrays["data"])


def test_rate_hz_paces_the_events() -> None:
    src = source(detector="custom", shape=[16, 16], events=4, rate_hz=40.0, resolution_limit_a=8.0)
    src.open()
    started = time.perf_counter()
    assert len(list(src.events())) == 4
    assert time.perf_counter() - started >= 3 / 40.0  # a lower bound: pacing sleeps, it never runs ahead


def test_runs_through_the_pipeline_and_serializer() -> None:
    config = {
        "source": {"type": "synthetic-diffraction", **SMALL, "events": 5, "hit_fraction": 0.6, "seed": 3},
        "handlers": [{"type": "null"}],
    }
    pipeline = Pipeline(validate_pipeline(config))
    end = pipeline.run()
    assert end.reason == "completed", end.error
    assert end.events_sent == 5 and end.counts["read"] == 5
    assert pipeline.handlers[0].messages == 7  # start, five events, end
    assert pipeline.stats.bytes_sent > 5 * 2 * 128 * 160 * 2  # the frames were serialized
