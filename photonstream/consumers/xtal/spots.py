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
    _, rows, cols = modules.shape
    # Sparse photon data: a mean beats a median of zeros as the background level.
    background = modules[:, ::3, ::3].mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    signal = modules.astype(np.float32, copy=False) - background[:, None, None]
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[1] = True  # 8-connected within a module, never across modules
    labels, n_labels = ndimage.label(signal > settings.threshold, structure=in_plane)
    if n_labels == 0:
        return np.zeros((0, 3), np.float32)
    flat_labels = labels.reshape(-1)
    core = np.flatnonzero(flat_labels)
    core_label = flat_labels[core]
    pixels = np.bincount(core_label, minlength=n_labels + 1)
    index, label = _grow(core, core_label, rows, cols, settings.grow_px)
    values = signal.reshape(-1)[index].astype(np.float64)
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
    index = np.concatenate(indices)
    labels_all = np.concatenate(labels)
    order = np.lexsort((-labels_all, index))
    index, labels_all = index[order], labels_all[order]
    first = np.ones(index.size, dtype=bool)
    first[1:] = index[1:] != index[:-1]
    return index[first], labels_all[first]
