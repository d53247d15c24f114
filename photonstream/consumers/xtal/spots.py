"""Per-frame hit finding and spot finding.

Hit finding is the pipeline's numpy peak finder (``photonstream.processing.hitfinder.find_peaks``): a frame with at
least ``min_peaks`` peaks is a hit. A frame that already went through a ``hitfinder`` step keeps that verdict.

Spot finding (hits only) labels connected pixels above the module background + ``threshold`` with
``scipy.ndimage``, grows each spot by ``grow_px`` pixels so its centroid also weighs the faint wings, and keeps spots of
``min_pixels`` or more pixels whose summed signal reaches ``min_signal``. Output: N×3 float32 (flattened slow,
fast, background-subtracted signal), brightest first; data units are assumed to be photons (calibrated data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photonstream.errors import ConfigError
from photonstream.frames import Frame
from photonstream.processing.hitfinder import HitfinderOptions, find_peaks, pixel_components


@dataclass(frozen=True)
class HitVerdict:
    hit: bool
    n_peaks: int
    from_upstream: bool


def find_hit(frame: Frame, modules: np.ndarray | None, options: HitfinderOptions, array: str = "data") -> HitVerdict:
    """Whether ``frame`` is a hit: the upstream hitfinder's flag when present, else our own peak count (which
    needs the image: ``modules`` None, i.e. the frame has no ``array``, is then a ``ConfigError``)."""
    if "hit" in frame.metadata and "n_peaks" in frame.metadata:
        return HitVerdict(bool(frame.metadata["hit"]), int(frame.metadata["n_peaks"]), True)
    if modules is None:
        raise ConfigError(f"event {frame.event} has neither a hit verdict nor an array {array!r} to find one in")
    peaks = find_peaks(modules, options)
    return HitVerdict(len(peaks) >= options.min_peaks, len(peaks), False)


@dataclass(frozen=True)
class SpotFinderSettings:
    threshold: float = 1.5  # above the module background (photons)
    min_pixels: int = 2
    min_signal: float = 6.0  # summed background-subtracted signal (photons)
    grow_px: int = 1
    max_spots: int = 1000


def find_spots(modules: np.ndarray, settings: SpotFinderSettings = SpotFinderSettings()) -> np.ndarray:
    """Spots of a ``(modules, rows, cols)`` array as N×3 float32 (flattened slow, fast, signal), brightest first."""
    if modules.ndim == 2:
        modules = modules[None]
    _, rows, cols = modules.shape
    # Sparse photon data: a mean beats a median of zeros as the background level.
    background = modules[:, ::3, ::3].mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    core = _above_background(modules, background, settings.threshold)
    if core.size == 0:
        return np.zeros((0, 3), np.float32)
    # Few pixels are above the threshold, so label them as a sparse graph (8-connected within a module, never
    # across modules), not the whole image: the same labels a raster-scan labelling gives, ten times sooner.
    core_label, n_labels = pixel_components(core, rows, cols)
    core_label += 1  # 0 is "no spot"
    pixels = np.bincount(core_label, minlength=n_labels + 1)
    index, label = _grow(core, core_label, rows, cols, settings.grow_px)
    values = _signal(modules, background, index).astype(np.float64)
    weights = np.clip(values, 0.0, None)
    size = n_labels + 1
    total = np.bincount(label, values, size)
    weight_sum = np.maximum(np.bincount(label, weights, size), 1e-12)
    slow = np.bincount(label, weights * (index // cols), size) / weight_sum  # flattened slow = module·rows + row
    fast = np.bincount(label, weights * (index % cols), size) / weight_sum
    keep = (pixels >= settings.min_pixels) & (total >= settings.min_signal)
    keep[0] = False
    spots = np.stack([slow[keep], fast[keep], total[keep]], axis=1)
    spots = spots[np.argsort(-spots[:, 2], kind="stable")][: settings.max_spots]
    return spots.astype(np.float32)


def _signal(modules: np.ndarray, background: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Pixels ``index`` (flat) less their module's background, in float32."""
    module = index // (modules.shape[1] * modules.shape[2])
    return modules.reshape(-1)[index].astype(np.float32) - background[module]


def _above_background(modules: np.ndarray, background: np.ndarray, threshold: float) -> np.ndarray:
    """Sorted flat indices of the pixels whose float32 signal (pixel - module background) exceeds ``threshold``.

    Integer data is first narrowed in its own type to the pixels that can pass (v > floor(background + threshold
    - tolerance), the tolerance covering float32 rounding near the threshold), which touches the image once
    without making a float copy of it; the exact float32 test then runs on those few."""
    if modules.dtype.kind in "iu":
        info = np.iinfo(modules.dtype)
        level = background.astype(np.float64) + threshold
        floor = np.floor(level - 1e-4 * (1.0 + np.abs(level)))
        candidates = np.flatnonzero(modules > np.clip(floor, info.min, info.max).astype(modules.dtype)[:, None, None])
    else:
        candidates = np.flatnonzero(modules.astype(np.float32, copy=False) - background[:, None, None] > threshold)
    return candidates[_signal(modules, background, candidates) > threshold]


def _grow(core: np.ndarray, label: np.ndarray, rows: int, cols: int, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """The labelled pixels (flat indices) and their neighbours within ``grow`` pixels in the same module, each with
    the label of a spot it touches (the highest where two spots meet)."""
    if grow <= 0:
        return core, label
    row = (core // cols) % rows
    col = core % cols
    indices, labels = [core], [label]
    for d_row in range(-grow, grow + 1):
        for d_col in range(-grow, grow + 1):
            if d_row == 0 and d_col == 0:
                continue
            inside = (row + d_row >= 0) & (row + d_row < rows) & (col + d_col >= 0) & (col + d_col < cols)
            indices.append(core[inside] + d_row * cols + d_col)
            labels.append(label[inside])
    # One sorted int64 key per (pixel, label): by pixel, and for one pixel the highest label first; a plain sort
    # of it is several times faster than a lexsort of the two arrays.
    span = np.int64(label.max()) + 1
    keys = np.sort(np.concatenate(indices).astype(np.int64) * span + (span - 1 - np.concatenate(labels)))
    index = keys // span
    first = np.ones(index.size, dtype=bool)
    first[1:] = index[1:] != index[:-1]
    return index[first], (span - 1 - keys[first] % span).astype(label.dtype)
