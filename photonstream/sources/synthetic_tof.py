"""``synthetic-tof``: ion time-of-flight digitizer waveforms with ground truth, deterministic for a seed.

    source: {type: synthetic-tof, events: 1000, channels: 2, species: [{mq: 18, abundance: 3}, {mq: 32}]}

Sample ``i`` of a record is at time ``i × sample_period_ns`` after the trigger. Each shot, every channel sees a
Poisson number of ions (mean ``ions_per_shot``); each ion is a species drawn by abundance and arrives at
``t = t0_ns + k_ns·sqrt(m/q)`` plus Gaussian jitter. An ion makes an MCP-like pulse: a difference of exponentials
(rise ``rise_ns``, decay ``decay_ns``) whose extremum lies at the arrival time, with a gamma-distributed height
(mean ``pulse_amplitude``). ``polarity: negative`` (the default) makes pulses go down from the baseline, as MCP
signals on a digitizer do. The baseline is ``baseline`` plus a per-shot linear drift across the record (end-to-end
change ~ N(0, ``baseline_drift``)) plus Gaussian noise ``noise``; ``int16`` records are rounded and clipped.

Frame: ``arrays = {"waveform": (channels, samples)}``; metadata ``true_mq``, ``true_times_ns`` (float64, the
pulse extremum times) and ``true_channel`` (int32), one entry per ion, ordered by channel and time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from photonstream.config.base import PluginOptions
from photonstream.frames import Frame, Geometry
from photonstream.sources._pacing import paced_indices
from photonstream.sources.base import Shard, SourceInfo, registry


class Species(BaseModel):
    """One ion species: mass-to-charge ratio (Da/e) and relative abundance."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mq: float = Field(gt=0.0, description="mass-to-charge ratio (Da per elementary charge)")
    abundance: float = Field(1.0, gt=0.0, description="relative abundance")
    name: str = Field("", description="label, e.g. H2O+")


DEFAULT_SPECIES = (
    Species(mq=1.008, abundance=2.0, name="H+"),
    Species(mq=18.011, abundance=3.0, name="H2O+"),
    Species(mq=28.014, abundance=4.0, name="N2+"),
    Species(mq=31.999, abundance=1.5, name="O2+"),
    Species(mq=39.962, abundance=0.5, name="Ar+"),
    Species(mq=43.990, abundance=0.3, name="CO2+"),
)


class SyntheticTofOptions(PluginOptions):
    type: Literal["synthetic-tof"] = "synthetic-tof"
    events: int = Field(100, ge=0, description="number of shots")
    seed: int = Field(0, ge=0, description="seed of everything random (same seed, same records)")
    rate_hz: float = Field(0.0, ge=0.0, description="shots per second; 0 = as fast as possible")
    channels: int = Field(1, ge=1, le=64, description="digitizer channels (independent detectors)")
    samples: int = Field(10000, ge=16, le=10_000_000, description="samples per record")
    sample_period_ns: float = Field(0.5, gt=0.0, description="time between samples (ns)")
    t0_ns: float = Field(100.0, ge=0.0, description="flight-time offset t0 in t = t0 + k·sqrt(m/q) (ns)")
    k_ns: float = Field(600.0, gt=0.0, description="flight-time scale k in t = t0 + k·sqrt(m/q) (ns)")
    species: tuple[Species, ...] = Field(DEFAULT_SPECIES, min_length=1, description="ion species")
    ions_per_shot: float = Field(20.0, ge=0.0, le=100000.0, description="mean ions per shot and channel")
    pulse_amplitude: float = Field(300.0, gt=0.0, description="mean pulse height (counts)")
    amplitude_shape: float = Field(4.0, gt=0.0, description="gamma shape of the pulse-height distribution")
    rise_ns: float = Field(0.4, gt=0.0, description="pulse rise time constant (ns)")
    decay_ns: float = Field(1.5, gt=0.0, description="pulse decay time constant (ns)")
    time_jitter_ns: float = Field(0.2, ge=0.0, description="Gaussian spread of arrival times (ns)")
    polarity: Literal["negative", "positive"] = Field("negative", description="direction of the pulses")
    baseline: float = Field(2000.0, description="baseline offset (counts)")
    baseline_drift: float = Field(5.0, ge=0.0, description="spread of the per-shot baseline change (counts)")
    noise: float = Field(3.0, ge=0.0, description="Gaussian noise per sample (counts)")
    dtype: Literal["int16", "float32"] = Field("int16", description="int16 digitizer counts or float32")
    distinct_shots: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="make this many distinct records and cycle through them (shot i is record "
        "i mod N): a digitizer-rate source for benchmarks, generation paid once; default: every shot its own",
    )

    def frame_bytes(self) -> tuple[int, str]:
        """Bytes of one frame's waveform (channels × samples × dtype), and the option that sizes it."""
        return self.channels * self.samples * np.dtype(self.dtype).itemsize, "samples"

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticTofOptions:
        if self.rise_ns >= self.decay_ns:
            raise ValueError(f"rise_ns ({self.rise_ns}) must be shorter than decay_ns ({self.decay_ns})")
        record_ns = self.samples * self.sample_period_ns
        for s in self.species:
            arrival = self.t0_ns + self.k_ns * np.sqrt(s.mq)
            if arrival >= record_ns:
                raise ValueError(
                    f"species m/q {s.mq} arrives at {arrival:.1f} ns, after the record ends at {record_ns:.1f} ns "
                    "(raise samples or sample_period_ns, or lower k_ns)"
                )
        return self


@registry.register
class SyntheticTof:
    Options: ClassVar[type[PluginOptions]] = SyntheticTofOptions

    def __init__(self, options: SyntheticTofOptions) -> None:
        self.options = options
        self._shard = Shard()
        mq = np.array([s.mq for s in options.species])
        abundance = np.array([s.abundance for s in options.species])
        self._mq = mq
        self._probability = abundance / abundance.sum()
        rise, decay = options.rise_ns, options.decay_ns
        self.peak_offset_ns = rise * decay / (decay - rise) * np.log(decay / rise)  # onset → extremum
        self._pulse_norm = np.exp(-self.peak_offset_ns / decay) - np.exp(-self.peak_offset_ns / rise)
        self._pulse_samples = int(np.ceil((self.peak_offset_ns + 12 * decay) / options.sample_period_ns)) + 2
        self._records: dict[int, Frame] = {}  # with distinct_shots: the records made so far, by record number

    def flight_time_ns(self, mq: np.ndarray | float) -> np.ndarray:
        """t = t0 + k·sqrt(m/q), the nominal arrival (pulse extremum) time."""
        return self.options.t0_ns + self.options.k_ns * np.sqrt(np.asarray(mq, dtype=np.float64))

    def pulse(self, since_onset_ns: np.ndarray) -> np.ndarray:
        """Unit-height pulse shape (positive) at times since the ion's pulse onset; zero before it."""
        o = self.options
        t = np.maximum(since_onset_ns, 0.0)
        shape = (np.exp(-t / o.decay_ns) - np.exp(-t / o.rise_ns)) / self._pulse_norm
        return np.where(since_onset_ns > 0, shape, 0.0)

    # -- Source protocol --------------------------------------------------------------------------------------
    def set_shard(self, shard: Shard) -> None:
        self._shard = shard

    def open(self) -> SourceInfo:
        o = self.options
        details = {
            "generator": "synthetic-tof",
            "seed": o.seed,
            "events": o.events,
            "channels": o.channels,
            "samples": o.samples,
            "sample_period_ns": o.sample_period_ns,
            "time_axis": "sample i is at i * sample_period_ns after the trigger",
            "t0_ns": o.t0_ns,
            "k_ns": o.k_ns,
            "flight_time": "t_ns = t0_ns + k_ns * sqrt(m/q)",
            "species": [s.model_dump() for s in o.species],
            "ions_per_shot": o.ions_per_shot,
            "pulse": {
                "shape": "exp(-t/decay) - exp(-t/rise), extremum at the arrival time",
                "rise_ns": o.rise_ns,
                "decay_ns": o.decay_ns,
                "mean_amplitude": o.pulse_amplitude,
                "polarity": o.polarity,
            },
            "baseline": o.baseline,
            "noise": o.noise,
            "dtype": o.dtype,
            "distinct_shots": o.distinct_shots,
        }
        return SourceInfo(
            detector="synthetic-tof",
            geometry=Geometry(detector_shape=(o.channels, o.samples)),
            expected_events=sum(1 for i in range(o.events) if self._shard.owns(i)),
            details=details,
        )

    def events(self) -> Iterator[Frame]:
        for index in paced_indices(self.options.events, self._shard, self.options.rate_hz):
            yield self.frame(index)

    def close(self) -> None:
        return None

    # -- generation -------------------------------------------------------------------------------------------
    def frame(self, index: int) -> Frame:
        """Shot ``index``; the same index always gives the same record (independent of sharding)."""
        distinct = self.options.distinct_shots
        if distinct is None:
            return self._generate(index)
        record = self._records.get(index % distinct)
        if record is None:
            record = self._records[index % distinct] = self._generate(index % distinct)
            for array in (*record.arrays.values(), *record.metadata.values()):
                array.flags.writeable = False  # shared by every shot that repeats it
        return Frame(event=index, arrays=dict(record.arrays), metadata=dict(record.metadata), timestamp=time.time())

    def _generate(self, index: int) -> Frame:
        o = self.options
        rng = np.random.default_rng([o.seed, index])
        counts = rng.poisson(o.ions_per_shot, o.channels)
        channel = np.repeat(np.arange(o.channels, dtype=np.int32), counts)
        species = rng.choice(len(self._mq), size=channel.size, p=self._probability)
        mq = self._mq[species]
        arrival = self.flight_time_ns(mq) + o.time_jitter_ns * rng.standard_normal(channel.size)
        amplitude = rng.gamma(o.amplitude_shape, o.pulse_amplitude / o.amplitude_shape, channel.size)
        order = np.lexsort((arrival, channel))
        channel, mq, arrival, amplitude = channel[order], mq[order], arrival[order], amplitude[order]

        times = np.arange(o.samples) * o.sample_period_ns
        ramp = rng.standard_normal(o.channels) * o.baseline_drift
        waveform = o.baseline + ramp[:, None] * (times / times[-1] - 0.5)[None, :]
        waveform = waveform + o.noise * rng.standard_normal((o.channels, o.samples))
        self._add_pulses(waveform, channel, arrival, amplitude)
        if o.dtype == "int16":
            data = np.clip(np.rint(waveform), -32768, 32767).astype(np.int16)
        else:
            data = waveform.astype(np.float32)
        metadata = {"true_mq": mq, "true_times_ns": arrival, "true_channel": channel}
        return Frame(event=index, arrays={"waveform": data}, metadata=metadata, timestamp=time.time())

    def _add_pulses(
        self, waveform: np.ndarray, channel: np.ndarray, arrival: np.ndarray, amplitude: np.ndarray
    ) -> None:
        o = self.options
        if channel.size == 0:
            return
        onset = arrival - self.peak_offset_ns
        first = np.ceil(onset / o.sample_period_ns).astype(np.int64)
        sample = first[:, None] + np.arange(self._pulse_samples)  # (ions, pulse samples)
        sign = -1.0 if o.polarity == "negative" else 1.0
        values = sign * amplitude[:, None] * self.pulse(sample * o.sample_period_ns - onset[:, None])
        inside = (sample >= 0) & (sample < o.samples)
        flat = (channel[:, None].astype(np.int64) * o.samples + sample)[inside]
        np.add.at(waveform.reshape(-1), flat, values[inside])
