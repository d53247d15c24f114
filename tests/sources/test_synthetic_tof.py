"""synthetic-tof: determinism, shapes and dtypes, peaks at t0 + k·sqrt(m/q), abundances, calibration details,
option errors and a run through the real pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError
from photonstream.pipeline import Pipeline
from photonstream.sources.synthetic_tof import SyntheticTof, SyntheticTofOptions

THREE_SPECIES = [{"mq": 4.0, "abundance": 1.0}, {"mq": 16.0, "abundance": 2.0}, {"mq": 40.0, "abundance": 1.0}]


def records(**options: Any) -> tuple[SyntheticTof, dict, list]:
    src = SyntheticTof(SyntheticTofOptions(**options))
    info = src.open()
    return src, info.details, list(src.events())


def test_same_seed_same_records_and_another_seed_differs() -> None:
    _, _, first = records(events=4, seed=3, channels=2)
    _, _, again = records(events=4, seed=3, channels=2)
    _, _, other = records(events=4, seed=4, channels=2)
    for a, b, c in zip(first, again, other, strict=True):
        np.testing.assert_array_equal(a.arrays["waveform"], b.arrays["waveform"])
        np.testing.assert_array_equal(a.metadata["true_times_ns"], b.metadata["true_times_ns"])
        assert not np.array_equal(a.arrays["waveform"], c.arrays["waveform"])


def test_distinct_shots_cycle_through_the_first_records() -> None:
    _, details, cycled = records(events=7, seed=3, channels=2, distinct_shots=3)
    _, _, plain = records(events=3, seed=3, channels=2)
    assert details["distinct_shots"] == 3 and [f.event for f in cycled] == list(range(7))
    for frame in cycled:  # shot i is record i mod 3, exactly as generated without the option
        original = plain[frame.event % 3]
        np.testing.assert_array_equal(frame.arrays["waveform"], original.arrays["waveform"])
        np.testing.assert_array_equal(frame.metadata["true_mq"], original.metadata["true_mq"])
    assert cycled[0].arrays["waveform"] is cycled[3].arrays["waveform"]  # made once
    assert not cycled[0].arrays["waveform"].flags.writeable


@pytest.mark.parametrize(("dtype", "numpy_dtype"), [("int16", np.int16), ("float32", np.float32)])
def test_shape_dtype_and_ground_truth_layout(dtype: str, numpy_dtype: type) -> None:
    _, _, shots = records(events=3, channels=3, samples=8000, dtype=dtype, species=THREE_SPECIES)
    for shot in shots:
        waveform = shot.arrays["waveform"]
        assert waveform.shape == (3, 8000) and waveform.dtype == numpy_dtype
        channel, times = shot.metadata["true_channel"], shot.metadata["true_times_ns"]
        assert len(channel) == len(times) == len(shot.metadata["true_mq"])
        assert np.all(np.diff(channel) >= 0)  # ordered by channel, then time
        for c in range(3):
            assert np.all(np.diff(times[channel == c]) >= 0)


def test_pulses_sit_at_the_configured_flight_times() -> None:
    t0, k, period = 80.0, 500.0, 0.5
    _, details, shots = records(
        events=60, seed=1, species=THREE_SPECIES, ions_per_shot=4, t0_ns=t0, k_ns=k, samples=8000, noise=2.0
    )
    assert (details["t0_ns"], details["k_ns"], details["sample_period_ns"]) == (t0, k, period)
    baseline = details["baseline"]
    average = np.mean([s.arrays["waveform"][0].astype(np.float64) for s in shots], axis=0) - baseline
    for species in THREE_SPECIES:
        expected = t0 + k * np.sqrt(species["mq"])
        lo, hi = int((expected - 30) / period), int((expected + 30) / period)
        deepest = lo + int(np.argmin(average[lo:hi]))
        assert abs(deepest * period - expected) <= period  # negative-going pulse, extremum at the flight time
        assert average[deepest] < -20  # a real dip, not noise
        # Converting the dip back with the published calibration gives the species' m/q.
        mq = ((deepest * details["sample_period_ns"] - details["t0_ns"]) / details["k_ns"]) ** 2
        assert mq == pytest.approx(species["mq"], rel=0.02)
    quiet = average[int(2500 / period) : int(3000 / period)]  # between the 16 and 40 arrivals
    assert np.abs(quiet).max() < 3

    all_mq = np.concatenate([s.metadata["true_mq"] for s in shots])
    all_times = np.concatenate([s.metadata["true_times_ns"] for s in shots])
    np.testing.assert_allclose(all_times, t0 + k * np.sqrt(all_mq), atol=5 * 0.2)  # jitter 0.2 ns
    fractions = [np.mean(all_mq == s["mq"]) for s in THREE_SPECIES]
    n = len(all_mq)
    for fraction, share in zip(fractions, (0.25, 0.5, 0.25), strict=True):
        assert abs(fraction - share) < 4 * np.sqrt(share * (1 - share) / n)


def test_isolated_pulse_height_and_polarity() -> None:
    one = [{"mq": 25.0}]
    options = {"events": 10, "species": one, "ions_per_shot": 1.0, "noise": 0.0, "baseline_drift": 0.0}
    src, details, shots = records(**options, polarity="positive", dtype="float32", seed=2)
    shot = next(s for s in shots if len(s.metadata["true_times_ns"]) == 1)
    times = shot.metadata["true_times_ns"]
    waveform = shot.arrays["waveform"][0] - details["baseline"]
    peak_sample = int(np.argmax(waveform))
    assert abs(peak_sample * 0.5 - times[0]) <= 0.5
    assert 0 < waveform.max() <= 300 * 10  # gamma-distributed height around the mean of 300 counts
    assert waveform.min() >= -1e-3  # positive polarity never dips below the baseline
    assert src.pulse(np.array([-1.0, 0.0]))[0] == 0.0
    peak_offset = src.peak_offset_ns
    assert src.pulse(np.array([peak_offset]))[0] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"rise_ns": 2.0, "decay_ns": 1.0}, "must be shorter than decay_ns"),
        ({"species": [{"mq": 5000.0}]}, "after the record ends"),
        ({"species": []}, "source.species"),
        ({"species": [{"mq": 4.0, "charge": 2}]}, "unknown option"),
        ({"species": [{"mq": -1.0}]}, "source.species[0].mq"),
        ({"channels": 0}, "source.channels"),
        ({"dtype": "int8"}, "source.dtype"),
    ],
)
def test_bad_options_are_rejected_with_one_clear_line(options: dict, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_pipeline({"source": {"type": "synthetic-tof", **options}, "handlers": [{"type": "null"}]})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_runs_through_the_pipeline_and_serializer() -> None:
    config = {"source": {"type": "synthetic-tof", "events": 6, "channels": 2}, "handlers": [{"type": "null"}]}
    pipeline = Pipeline(validate_pipeline(config))
    end = pipeline.run()
    assert end.reason == "completed", end.error
    assert end.events_sent == 6 and pipeline.handlers[0].messages == 8
    assert pipeline.stats.bytes_sent > 6 * 2 * 10000 * 2
