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
from scipy import ndimage

from photonstream.frames import Frame
from photonstream.processing.hitfinder import HitfinderOptions, find_peaks


@dataclass(frozen=True)
class HitVerdict:
    hit: bool
    n_peaks: int
    from_upstream: bool


def find_hit(frame: Frame, modules: np.ndarray, options: HitfinderOptions) -> HitVerdict:
    """Whether ``frame`` is a hit: the upstream hitfinder's flag when present, else our own peak count."""
    if "hit" in frame.metadata and "n_peaks" in frame.metadata:
        return HitVerdict(bool(frame.metadata["hit"]), int(frame.metadata["n_peaks"]), True)
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
    n_modules, rows, _ = modules.shape
    found: list[np.ndarray] = []
    structure = np.ones((3, 3), dtype=bool)
    for m in range(n_modules):
        image = modules[m].astype(np.float32, copy=False)
        background = float(np.mean(image[::3, ::3]))  # sparse photon data: a mean beats a median of zeros
        above = image > background + settings.threshold
        if not above.any():
            continue
        labels, n_labels = ndimage.label(above, structure=structure)
        pixels = np.bincount(labels.ravel(), minlength=n_labels + 1)[1:]
        if settings.grow_px > 0:
            labels = ndimage.grey_dilation(labels, size=2 * settings.grow_px + 1)
        signal = image - background
        index = np.arange(1, n_labels + 1)
        total = ndimage.sum_labels(signal, labels, index)
        weights = np.clip(signal, 0.0, None)
        weight_sum = np.maximum(ndimage.sum_labels(weights, labels, index), 1e-12)
        row_grid, col_grid = np.indices(image.shape)
        slow = ndimage.sum_labels(weights * row_grid, labels, index) / weight_sum
        fast = ndimage.sum_labels(weights * col_grid, labels, index) / weight_sum
        keep = (pixels >= settings.min_pixels) & (total >= settings.min_signal)
        if keep.any():
            found.append(np.stack([slow[keep] + m * rows, fast[keep], total[keep]], axis=1))
    if not found:
        return np.zeros((0, 3), np.float32)
    spots = np.concatenate(found)
    spots = spots[np.argsort(-spots[:, 2], kind="stable")][: settings.max_spots]
    return spots.astype(np.float32)
