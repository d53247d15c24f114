"""Time-of-flight analysis: ion hits in digitizer waveforms, their times and m/q, and live histograms.

    analyzer = TofAnalyzer(TofOptions(), start=start_message)
    results = analyzer.process(frames)            # a batch: frames, a FrameBatch or an array (shots, channels, samples)
    results.counts, results.times_ns, results.mq  # per shot and channel: hits; per hit: time, m/q
    analyzer.histograms()["mq"].peaks()           # accumulated histograms and their peaks

    summary = run_tof_consumer(read_stream("tcp://host:5555"))          # any iterator of photonstream messages
    summary = run_tof_consumer(subscribe(buffer, "exp/1/tof", group="tof"))
    summary = run_tof_consumer(sub, results=ResultPublisher.from_stream_info("stream.json", group="tof"))
    # ... and the m/q histogram with its peaks goes to the API (GET /v1/streams/{id}/results) at the end

Per batch, all traces are handled at once (numpy, no loop per trace): a baseline per trace (median or mean of a
pre-trigger window, or the median of the whole trace), an arming threshold (absolute, or ``threshold_sigma``
times the noise of the baseline window), and a constant-fraction discriminator on the arming points (delay and
attenuate, first negative-to-positive zero crossing, linear interpolation between samples). Hit times become m/q
through ``t = t0 + k·sqrt(m/q)``.

Where the numbers come from: ``sample_period_ns``, ``t0_ns``, ``k_ns`` and the pulse polarity are read from the
start message's ``source`` details (the ``synthetic-tof`` source writes them) unless the options set them; a
calibration message whose ``calibration.arrays`` holds ``t0_ns`` and/or ``k_ns`` updates them for the frames that
follow. A CFD time lies a fixed interval before the pulse extremum; ``time_offset_ns`` adds that interval back.
Left unset, it is computed from the pulse model in the details (``pulse.rise_ns``, ``pulse.decay_ns``: the same
discriminator run on noiseless model pulses at many sub-sample phases) or, without a model, taken as 0 (then t0
is whatever the instrument calibration measured with this discriminator, as on a real spectrometer).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from photonstream.config.base import one_line
from photonstream.consumers._tof_signal import (
    BaselineMethod,
    arming_levels,
    arming_runs,
    baselines,
    cfd_crossings,
    window_noise,
)
from photonstream.errors import ConfigError
from photonstream.frames import CalibrationMessage, EndMessage, Frame, FrameBatch, Message, StartMessage

Polarity = Literal["negative", "positive"]


class ResultSink(Protocol):
    """Where results go (``photonstream.client.ResultPublisher``)."""

    def publish(self, kind: str, data: dict[str, Any], *, frames: tuple[int, int] | None = None) -> int: ...


Bins = tuple[float, float, int]


class TofOptions(BaseModel):
    """How the TOF analyzer finds hits and bins them. Unset calibration fields come from the start message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    waveform: str = Field("waveform", description="name of the frames' waveform array: (channels, samples)")
    polarity: Polarity | None = Field(None, description="pulse direction; unset: the source's, else negative")
    baseline: BaselineMethod = Field(
        "median", description="median or mean of baseline_window, or trace-median (whole trace, slower)"
    )
    baseline_window: tuple[int, int] = Field((0, 256), description="pre-trigger samples [start, stop)")
    threshold: float | None = Field(None, gt=0, description="arming level above baseline (counts); unset: auto")
    threshold_sigma: float = Field(10.0, gt=0, description="auto threshold: this many noise sigmas")
    cfd_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="CFD attenuation fraction")
    cfd_delay_samples: int = Field(1, ge=1, le=256, description="CFD delay (samples)")
    search_samples: int = Field(8, ge=1, le=4096, description="samples after arming searched for the crossing")
    merge_gap_samples: int = Field(2, ge=0, le=4096, description="below-threshold gap that still counts as one pulse")
    sample_period_ns: float | None = Field(None, gt=0, description="time between samples (ns); unset: source's")
    t0_ns: float | None = Field(None, description="t0 in t = t0 + k·sqrt(m/q) (ns); unset: source's")
    k_ns: float | None = Field(None, gt=0, description="k in t = t0 + k·sqrt(m/q) (ns); unset: source's")
    time_offset_ns: float | None = Field(None, description="added to CFD times; unset: from the pulse model or 0")
    tof_bins: Bins | None = Field(None, description="(start_ns, stop_ns, bins); unset: the record, 1 bin/sample")
    mq_bins: Bins = Field((0.0, 150.0, 30000), description="(start, stop, bins) of the m/q histogram")

    @model_validator(mode="after")
    def _consistent(self) -> TofOptions:
        start, stop = self.baseline_window
        if not 0 <= start < stop:
            raise ValueError(f"baseline_window must be [start, stop) with 0 <= start < stop, got {[start, stop]}")
        for name in ("tof_bins", "mq_bins"):
            bins = getattr(self, name)
            if bins is not None and not (bins[0] < bins[1] and bins[2] >= 1):
                raise ValueError(f"{name} must be (start, stop, count) with start < stop and count >= 1")
        return self

    @classmethod
    def parse(cls, values: dict[str, Any] | None = None, **overrides: Any) -> TofOptions:
        """Validate a mapping (e.g. from YAML or the command line); a bad value raises one-line ``ConfigError``."""
        try:
            return cls(**{**(values or {}), **overrides})
        except ValidationError as exc:
            raise ConfigError(one_line(exc, "tof")) from exc


@dataclass
class Histogram:
    """A fixed-bin histogram accumulated per channel: ``counts[channel, bin]``."""

    edges: np.ndarray
    counts: np.ndarray

    @property
    def total(self) -> np.ndarray:
        return self.counts.sum(axis=0)

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def add(self, values: np.ndarray, channel: np.ndarray) -> None:
        bins = self.counts.shape[1]
        lo, hi = self.edges[0], self.edges[-1]
        with np.errstate(invalid="ignore"):
            index = np.floor((values - lo) * (bins / (hi - lo)))
            keep = (index >= 0) & (index < bins)
        flat = channel[keep].astype(np.int64) * bins + index[keep].astype(np.int64)
        self.counts += np.bincount(flat, minlength=self.counts.size).reshape(self.counts.shape)

    def peaks(self, min_fraction: float = 0.01, half_width: int = 3) -> list[Peak]:
        """Peaks of the channel sum, largest first: maxima of the sum smoothed over 2·``half_width`` + 1 bins that
        reach ``min_fraction`` of the tallest and lie at least that far apart; positions are count-weighted
        centroids over ±``half_width`` bins."""
        from scipy.signal import find_peaks

        total = self.total.astype(np.float64)
        width = 2 * half_width + 1
        smooth = np.convolve(total, np.ones(width), mode="same")
        if smooth.max(initial=0.0) <= 0:
            return []
        index, _ = find_peaks(np.pad(smooth, 1), height=min_fraction * smooth.max(), distance=width)
        centers = self.centers
        found = []
        for i in index - 1:
            lo, hi = max(i - half_width, 0), min(i + half_width + 1, total.size)
            weight = total[lo:hi]
            found.append(Peak(float(np.dot(weight, centers[lo:hi]) / weight.sum()), int(weight.sum())))
        return sorted(found, key=lambda p: -p.counts)

    def copy(self) -> Histogram:
        return Histogram(self.edges.copy(), self.counts.copy())


@dataclass(frozen=True, slots=True)
class Peak:
    position: float
    counts: int


@dataclass
class TofResults:
    """Hits of one batch. Per shot: ``events`` and ``counts[shot, channel]``; per hit (ordered by shot, channel,
    time): ``shot`` (index in the batch), ``channel``, ``times_ns``, ``mq`` (NaN before t0 or without a
    calibration), ``amplitude`` (counts above baseline) and ``cfd`` (False: threshold-crossing time instead)."""

    events: np.ndarray
    counts: np.ndarray
    shot: np.ndarray
    channel: np.ndarray
    times_ns: np.ndarray
    mq: np.ndarray
    amplitude: np.ndarray
    cfd: np.ndarray

    @property
    def hits(self) -> int:
        return int(self.times_ns.size)

    def of(self, shot: int, channel: int | None = None) -> slice:
        """The hits of one shot (and channel) as a slice into the per-hit arrays."""
        per_row = self.counts.reshape(-1)
        channels = self.counts.shape[1]
        first = shot * channels + (channel or 0)
        last = first + (channels if channel is None else 1)
        start = int(per_row[:first].sum())
        return slice(start, start + int(per_row[first:last].sum()))


class TofAnalyzer:
    """Finds ion hits in batches of waveforms and accumulates time-of-flight and m/q histograms."""

    def __init__(self, options: TofOptions | None = None, start: StartMessage | None = None) -> None:
        self.options = options or TofOptions()
        self.details: dict[str, Any] = {}
        self.shots = 0
        self.hits = 0
        self.threshold: float | None = self.options.threshold
        self.t0_ns = self.options.t0_ns
        self.k_ns = self.options.k_ns
        self._layout: tuple[int, int] | None = None  # (channels, samples) of the first batch
        self._model_offset: float | None = None
        self._histograms: dict[str, Histogram] = {}
        if start is not None:
            self.setup(start)

    # -- settings -----------------------------------------------------------------------------------------
    def setup(self, start: StartMessage) -> None:
        """Take the calibration the stream's source announced (options set explicitly win)."""
        self.details = dict(start.source or {})
        self._model_offset = None
        if self.options.t0_ns is None and "t0_ns" in self.details:
            self.t0_ns = float(self.details["t0_ns"])
        if self.options.k_ns is None and "k_ns" in self.details:
            self.k_ns = float(self.details["k_ns"])

    def on_calibration(self, message: CalibrationMessage) -> None:
        arrays = message.calibration.arrays
        if "t0_ns" in arrays:
            self.t0_ns = float(np.asarray(arrays["t0_ns"]).reshape(-1)[0])
        if "k_ns" in arrays:
            self.k_ns = float(np.asarray(arrays["k_ns"]).reshape(-1)[0])

    @property
    def sample_period_ns(self) -> float:
        period = self.options.sample_period_ns or self.details.get("sample_period_ns")
        if period is None:
            raise ConfigError(
                "tof.sample_period_ns: not set and not in the start message's source details; set it in the options"
            )
        return float(period)

    @property
    def sign(self) -> float:
        polarity = self.options.polarity or (self.details.get("pulse") or {}).get("polarity") or "negative"
        return -1.0 if polarity == "negative" else 1.0

    @property
    def time_offset_ns(self) -> float:
        if self.options.time_offset_ns is not None:
            return self.options.time_offset_ns
        if self._model_offset is None:
            pulse = self.details.get("pulse") or {}
            rise, decay = pulse.get("rise_ns"), pulse.get("decay_ns")
            self._model_offset = (
                model_time_offset(float(rise), float(decay), self.sample_period_ns, self.options)
                if rise is not None and decay is not None and 0 < float(rise) < float(decay)
                else 0.0
            )
        return self._model_offset

    def _prepare(self, rows: np.ndarray, channels: int, samples: int) -> None:
        if self._layout is None:
            self._layout = (channels, samples)
            period = self.sample_period_ns
            tof = self.options.tof_bins or (0.0, samples * period, samples)
            mq = self.options.mq_bins
            self._histograms = {
                "tof_ns": Histogram(np.linspace(tof[0], tof[1], tof[2] + 1), np.zeros((channels, tof[2]), np.int64)),
                "mq": Histogram(np.linspace(mq[0], mq[1], mq[2] + 1), np.zeros((channels, mq[2]), np.int64)),
            }
        elif self._layout != (channels, samples):
            raise ConfigError(
                f"tof: waveforms changed from (channels, samples) = {self._layout} to {(channels, samples)} mid-run"
            )
        if self.options.baseline_window[0] >= samples:
            raise ConfigError(f"tof.baseline_window starts at {self.options.baseline_window[0]}, after the record")
        if self.threshold is None:
            noise = window_noise(rows, self.options.baseline_window)
            self.threshold = self.options.threshold_sigma * max(noise, 1.0 if rows.dtype.kind in "iu" else 1e-12)

    # -- work ---------------------------------------------------------------------------------------------
    def process(self, frames: Iterable[Frame] | FrameBatch | Frame | np.ndarray) -> TofResults:
        """Hits of a batch; ``frames`` may also be an array (shots, channels, samples) or (shots, samples)."""
        traces, events = self._traces(frames)
        shots, channels, samples = traces.shape
        rows = traces.reshape(shots * channels, samples)
        self._prepare(rows, channels, samples)
        assert self.threshold is not None
        o = self.options
        sign = self.sign
        baseline = baselines(rows, o.baseline, o.baseline_window)
        levels = arming_levels(baseline, self.threshold, sign, rows.dtype)
        starts = arming_runs(rows, levels, sign, o.merge_gap_samples)
        crossings = cfd_crossings(
            rows, starts, baseline, self.threshold, sign, o.cfd_fraction, o.cfd_delay_samples, o.search_samples
        )
        times_ns = crossings.time_samples * self.sample_period_ns + self.time_offset_ns
        mq = self.mq_of(times_ns)
        shot, channel = np.divmod(crossings.row, channels)
        counts = np.bincount(crossings.row, minlength=shots * channels).reshape(shots, channels).astype(np.int32)
        self._histograms["tof_ns"].add(times_ns, channel)
        self._histograms["mq"].add(mq, channel)
        self.shots += shots
        self.hits += int(times_ns.size)
        return TofResults(
            events, counts, shot.astype(np.int32), channel.astype(np.int32), times_ns, mq, crossings.amplitude,
            crossings.cfd,
        )  # fmt: skip

    def mq_of(self, times_ns: np.ndarray) -> np.ndarray:
        """m/q = ((t - t0) / k)²; NaN for t <= t0 or while t0/k are unknown."""
        if self.t0_ns is None or self.k_ns is None:
            return np.full(times_ns.shape, np.nan)
        flight = (times_ns - self.t0_ns) / self.k_ns
        return np.where(flight > 0, flight * flight, np.nan)

    def histograms(self) -> dict[str, Histogram]:
        """Copies of the accumulated histograms: ``tof_ns`` and ``mq`` (empty before the first batch)."""
        return {name: h.copy() for name, h in self._histograms.items()}

    def _traces(self, frames: Iterable[Frame] | FrameBatch | Frame | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(frames, np.ndarray):
            traces = frames if frames.ndim == 3 else frames[:, None, :]
            events = np.arange(self.shots, self.shots + traces.shape[0], dtype=np.int64)
        else:
            if isinstance(frames, FrameBatch):
                batch = frames.frames
            else:
                batch = [frames] if isinstance(frames, Frame) else list(frames)
            if not batch:
                raise ConfigError("tof: an empty batch of frames")
            try:
                arrays = [f.array(self.options.waveform) for f in batch]
            except KeyError as exc:
                name, present = self.options.waveform, sorted(batch[0].arrays)
                raise ConfigError(f"tof.waveform: frames have no array {name!r} (they have {present})") from exc
            traces = np.stack([a if a.ndim == 2 else a.reshape(1, -1) for a in arrays])
            events = np.array([f.event for f in batch], dtype=np.int64)
        if traces.ndim != 3:
            raise ConfigError(f"tof: waveforms must be (channels, samples) per shot, got {traces.shape[1:]}")
        if not traces.dtype.isnative:
            traces = traces.astype(traces.dtype.newbyteorder("="))
        return np.ascontiguousarray(traces), events


def model_time_offset(rise_ns: float, decay_ns: float, period_ns: float, options: TofOptions) -> float:
    """Mean (extremum time - CFD time) of noiseless difference-of-exponential pulses at 64 sub-sample phases,
    found by the same discriminator the analyzer runs."""
    peak = rise_ns * decay_ns / (decay_ns - rise_ns) * np.log(decay_ns / rise_ns)
    norm = np.exp(-peak / decay_ns) - np.exp(-peak / rise_ns)
    lead = options.cfd_delay_samples + 4
    samples = lead + int(np.ceil((peak + 12 * decay_ns) / period_ns)) + options.search_samples + 8
    arrival = (lead + (np.arange(64) + 0.5) / 64) * period_ns + peak
    since = np.arange(samples) * period_ns - (arrival - peak)[:, None]
    shape = np.where(since > 0, np.exp(-np.maximum(since, 0) / decay_ns) - np.exp(-np.maximum(since, 0) / rise_ns), 0)
    traces = (1000.0 * shape / norm).astype(np.float32)
    baseline = np.zeros(traces.shape[0])
    threshold = 100.0
    starts = arming_runs(traces, arming_levels(baseline, threshold, 1.0, traces.dtype), 1.0, samples)
    crossings = cfd_crossings(
        traces, starts, baseline, threshold, 1.0, options.cfd_fraction, options.cfd_delay_samples,
        options.search_samples,
    )  # fmt: skip
    if crossings.row.size != traces.shape[0] or not crossings.cfd.all():
        return 0.0
    return float(np.mean(arrival - crossings.time_samples * period_ns))


@dataclass
class TofSummary:
    """What ``run_tof_consumer`` saw and found."""

    start: StartMessage | None = None
    end: EndMessage | None = None
    events: int = 0
    hits: int = 0
    batches: int = 0
    nbytes: int = 0
    seconds: float = 0.0  # wall time from the first message to the end
    busy_s: float = 0.0  # time spent in the analyzer
    histograms: dict[str, Histogram] = field(default_factory=dict)
    results: list[TofResults] = field(default_factory=list)  # only with keep_results=True

    def mq_peaks(self, min_fraction: float = 0.01) -> list[Peak]:
        return self.histograms["mq"].peaks(min_fraction) if "mq" in self.histograms else []

    def as_dict(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        return {
            "events": self.events,
            "hits": self.hits,
            "hits_per_event": round(self.hits / self.events, 3) if self.events else None,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events / seconds, 1),
            "mb_per_s": round(self.nbytes / seconds / 1e6, 1),
            "busy_fraction": round(self.busy_s / seconds, 3),
            "mq_peaks": [round(p.position, 4) for p in self.mq_peaks()[:10]],
            "end_reason": self.end.reason if self.end else None,
        }


def histogram_result(histogram: Histogram, quantity: str, max_bins: int = 2000) -> dict[str, Any]:
    """A ``tof_histogram`` result (``photonstream.client.results``): the channel sum, merged to at most
    ``max_bins`` bins, with the peak positions."""
    total = histogram.total
    factor = max(1, -(-total.size // max_bins))
    usable = total.size - total.size % factor
    counts = total[:usable].reshape(-1, factor).sum(axis=1)
    edges = histogram.edges[: usable + 1 : factor]
    peaks = [round(p.position, 4) for p in histogram.peaks()[:20]]
    return {"quantity": quantity, "edges": edges.tolist(), "counts": counts.astype(int).tolist(), "peaks": peaks}


def run_tof_consumer(
    messages: Iterable[Message],
    options: TofOptions | None = None,
    *,
    batch_size: int = 64,
    on_results: Callable[[TofResults, list[Frame]], None] | None = None,
    keep_results: bool = False,
    results: ResultSink | None = None,
) -> TofSummary:
    """Analyse a stream: any iterator of photonstream messages (``read_stream``, the buffer's ``subscribe``).

    Frames are analysed ``batch_size`` at a time (a calibration message or the end flushes a partial batch);
    ``on_results(results, frames)`` sees every batch. Stops after the end message and returns the summary;
    ``results`` (a ``photonstream.client.ResultPublisher``) then gets the m/q histogram and its peaks.
    """
    if batch_size < 1:
        raise ConfigError(f"tof: batch_size must be at least 1 (got {batch_size})")
    analyzer = TofAnalyzer(options)
    summary = TofSummary()
    pending: list[Frame] = []
    began = 0.0

    def flush() -> None:
        if not pending:
            return
        t = time.perf_counter()
        results = analyzer.process(pending)
        summary.busy_s += time.perf_counter() - t
        summary.batches += 1
        summary.events += len(pending)
        summary.hits += results.hits
        summary.nbytes += sum(f.arrays[analyzer.options.waveform].nbytes for f in pending)
        if on_results is not None:
            on_results(results, list(pending))
        if keep_results:
            summary.results.append(results)
        pending.clear()

    for message in messages:
        if not began:
            began = time.perf_counter()
        if isinstance(message, StartMessage):
            flush()
            summary.start = message
            analyzer.setup(message)
        elif isinstance(message, Frame):
            pending.append(message)
        elif isinstance(message, FrameBatch):
            pending.extend(message.frames)
        elif isinstance(message, CalibrationMessage):
            flush()
            analyzer.on_calibration(message)
        elif isinstance(message, EndMessage):
            flush()
            summary.end = message
            break
        if len(pending) >= batch_size:
            flush()
    flush()
    summary.seconds = time.perf_counter() - began if began else 0.0
    summary.histograms = analyzer.histograms()
    if results is not None and "mq" in summary.histograms and summary.events:
        last = summary.end.events_sent - 1 if summary.end is not None and summary.end.events_sent else None
        frames = (0, last) if last is not None else None
        results.publish("tof_histogram", histogram_result(summary.histograms["mq"], "mq"), frames=frames)
    return summary
