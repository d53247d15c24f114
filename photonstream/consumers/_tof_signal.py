"""Vectorised waveform arithmetic for the time-of-flight consumer: baselines, arming runs, CFD zero crossings.

Every function works on a 2-D block of traces (rows = shot × channel, columns = samples) and never loops over
rows in Python. The full traces are touched only twice (baseline window, arming comparison, both in the traces'
own dtype); the constant-fraction arithmetic runs on small windows gathered around the arming points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

BaselineMethod = Literal["median", "mean", "trace-median"]


def baselines(traces: np.ndarray, method: BaselineMethod, window: tuple[int, int]) -> np.ndarray:
    """Per-row baseline (float64): median or mean of the pre-trigger ``window``, or the median of the whole row."""
    if method == "trace-median":
        return row_median(traces)
    segment = traces[:, window[0] : window[1]]
    if method == "mean":
        return segment.mean(axis=1, dtype=np.float64)
    return row_median(segment)


def row_median(block: np.ndarray) -> np.ndarray:
    """Median of each row (float64). numpy's vectorised sort beats ``np.median`` (a partition per row) here."""
    ordered = np.sort(block, axis=1)
    n = ordered.shape[1]
    return 0.5 * (ordered[:, (n - 1) // 2].astype(np.float64) + ordered[:, n // 2])


def window_noise(traces: np.ndarray, window: tuple[int, int]) -> float:
    """Typical noise (counts): the median over rows of each row's standard deviation in the baseline window."""
    segment = traces[:, window[0] : window[1]]
    return float(np.median(segment.std(axis=1, dtype=np.float64)))


def arming_levels(baseline: np.ndarray, threshold: float, sign: float, dtype: np.dtype) -> np.ndarray:
    """The raw-sample level a pulse must pass to arm the discriminator, in the traces' dtype.

    Comparing in the traces' own dtype keeps the full-trace pass cheap (no float conversion of every sample).
    For integers: a negative pulse arms where ``x < baseline - threshold``, i.e. ``x < ceil(level)``; a positive
    one where ``x > floor(level)``.
    """
    level = baseline + sign * threshold
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        level = np.ceil(level) if sign < 0 else np.floor(level)
        return np.clip(level, info.min, info.max).astype(dtype)
    return level.astype(dtype)


def arming_runs(traces: np.ndarray, levels: np.ndarray, sign: float, merge_gap: int) -> np.ndarray:
    """Flat indices (row × samples + column) where the signal first passes its arming level, one per pulse.

    Stretches above the level that are separated by at most ``merge_gap`` samples below it count as one pulse
    (noise on a decaying tail must not re-arm the discriminator).
    """
    above = traces < levels[:, None] if sign < 0 else traces > levels[:, None]
    index = np.flatnonzero(above)
    if index.size == 0:
        return index
    samples = traces.shape[1]
    row = index // samples
    first = np.empty(index.size, dtype=bool)
    first[0] = True
    first[1:] = (np.diff(index) > merge_gap + 1) | (row[1:] != row[:-1])
    return index[first]


@dataclass(slots=True)
class Crossings:
    """Per pulse: row, time in samples since the row's first sample, height above baseline, CFD or fallback."""

    row: np.ndarray  # int64
    time_samples: np.ndarray  # float64
    amplitude: np.ndarray  # float32
    cfd: np.ndarray  # bool; False: no CFD zero crossing in the window, the threshold crossing is used


def cfd_crossings(
    traces: np.ndarray,
    starts: np.ndarray,
    baseline: np.ndarray,
    threshold: float,
    sign: float,
    fraction: float,
    delay: int,
    search: int,
) -> Crossings:
    """Constant-fraction times of the pulses that arm at flat indices ``starts``.

    The CFD signal ``c[j] = s[j - delay] - fraction·s[j]`` (``s``: baseline-subtracted, pulses made positive)
    goes from negative to positive on a pulse's leading edge at a time that does not depend on the pulse height.
    The crossing accepted is the first one from ``delay`` samples before the arming point to ``search`` samples
    after it where the undelayed signal is above ``fraction × threshold``; its time is interpolated linearly
    between the two samples. A pulse without such a crossing (slow rise, pile-up) keeps its interpolated
    threshold-crossing time and is flagged.
    """
    samples = traces.shape[1]
    row = starts // samples
    column = starts - row * samples
    pre = delay + 2
    offsets = np.arange(-pre, search + 1)
    columns = column[:, None] + offsets
    inside = (columns >= 0) & (columns < samples)
    flat = traces.reshape(-1)[row[:, None] * samples + np.clip(columns, 0, samples - 1)]
    s = (flat.astype(np.float32) - baseline[row][:, None].astype(np.float32)) * np.float32(sign)
    s[~inside] = 0.0

    c = s[:, :-delay] - np.float32(fraction) * s[:, delay:]  # c[:, k] belongs to window column k + delay
    first_column = max(delay + 1, pre - delay)
    j = np.arange(first_column, offsets.size)
    previous, current = c[:, j - 1 - delay], c[:, j - delay]
    candidate = (previous < 0) & (current >= 0) & (s[:, j] > fraction * threshold)
    found = candidate.any(axis=1)
    pick = np.argmax(candidate, axis=1)
    c0 = np.take_along_axis(previous, pick[:, None], axis=1)[:, 0].astype(np.float64)
    c1 = np.take_along_axis(current, pick[:, None], axis=1)[:, 0].astype(np.float64)
    step = np.where(found, c0 - c1, -1.0)
    cfd_column = j[pick] - 1 + c0 / step

    before, at = s[:, pre - 1].astype(np.float64), s[:, pre].astype(np.float64)
    rise = np.where(at > before, at - before, 1.0)
    edge_column = pre - 1 + np.clip((threshold - before) / rise, 0.0, 1.0)

    window_column = np.where(found, cfd_column, edge_column)
    time_samples = column + (window_column - pre)
    amplitude = s[:, pre:].max(axis=1)
    return Crossings(row, time_samples, amplitude, found)
