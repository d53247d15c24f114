"""Pictures of a stream for the dashboard: the latest frame as a small PNG with its peaks, a strip of the latest
thumbnails, and a powder profile.

Frames come as ``(rows, cols)`` or ``(modules, rows, cols)``; peak lists (``frame.metadata["peaks"]``, N×3 slow,
fast, intensity) use the flattened frame (slow = module·rows + row). Where the start message describes the module
layout the modules are placed as on the detector (``DetectorModel``), otherwise they are tiled in a grid.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from photonstream.detector import DetectorModel
from photonstream.errors import MissingDependencyError
from photonstream.frames import StartMessage

# anchor colours of a dark-to-bright map (black, indigo, crimson, orange, pale yellow)
_ANCHORS = np.array([[0, 0, 4], [60, 15, 110], [180, 45, 80], [245, 135, 30], [252, 255, 164]], dtype=np.float64)
COLORMAP = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)
PEAK_COLOR = (0, 230, 255)
STRIP_BACKGROUND = (29, 35, 48)
VERDICT_COLORS = {True: (76, 175, 80), False: (110, 117, 135), None: STRIP_BACKGROUND}  # hit, miss, unknown
STRIP_GAP, MARK_HEIGHT = 2, 4


def layout_of(start: StartMessage | None, shape: tuple[int, ...]) -> DetectorModel:
    """How frames of ``shape`` are laid out on the detector (see ``DetectorModel.for_frames``)."""
    return DetectorModel.for_frames(start, shape)


def block_max(image: np.ndarray, factor: int) -> np.ndarray:
    """Shrink by ``factor`` keeping each block's maximum (a one-pixel spot stays visible)."""
    if factor <= 1:
        return image
    rows, cols = image.shape
    padded = np.zeros((math.ceil(rows / factor) * factor, math.ceil(cols / factor) * factor), dtype=image.dtype)
    padded[:rows, :cols] = image
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).max(axis=(1, 3))


def log_signal(image: np.ndarray) -> np.ndarray:
    """log(1 + the signal above the median, the background)."""
    finite = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return np.log1p(np.clip(finite - np.median(finite), 0.0, None))


def log_scaled(image: np.ndarray, top: float | None = None) -> np.ndarray:
    """0..255: ``log_signal``, ``top`` (default: the brightest pixel's) at 255 (so a lone photon on an empty frame
    stays dim next to a Bragg spot)."""
    signal = log_signal(image)
    if top is None:
        top = float(signal.max()) if signal.size else 0.0
    return (np.clip(signal / (top or 1.0), 0.0, 1.0) * 255).astype(np.uint8)


@dataclass(frozen=True)
class FramePicture:
    png: bytes
    width: int
    height: int
    factor: int  # detector pixels per picture pixel
    peaks_drawn: int


def frame_picture(
    data: np.ndarray, peaks: np.ndarray | None, model: DetectorModel, max_size: int = 512
) -> FramePicture:
    """The frame assembled, downsampled to at most ``max_size`` pixels a side, log-scaled and coloured, with
    a circle around each peak."""
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise MissingDependencyError.for_package("pillow", "the dashboard's frame picture") from None

    image = model.assemble(data)
    factor = max(1, math.ceil(max(image.shape) / max_size))
    small = log_scaled(block_max(image, factor))
    picture = Image.fromarray(COLORMAP[small], mode="RGB")
    drawn = 0
    if peaks is not None and len(peaks):
        points = np.asarray(peaks, dtype=np.float64).reshape(-1, np.asarray(peaks).shape[-1])
        slow, fast = model.flat_to_assembled(points[:, 0], points[:, 1])
        draw = ImageDraw.Draw(picture)
        radius = 4
        for s, f in zip(slow / factor, fast / factor, strict=True):
            draw.ellipse((f - radius, s - radius, f + radius, s + radius), outline=PEAK_COLOR, width=1)
            drawn += 1
    out = io.BytesIO()
    picture.save(out, format="PNG", compress_level=3)
    return FramePicture(out.getvalue(), picture.width, picture.height, factor, drawn)


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="PNG", compress_level=3)
    return out.getvalue()


def thumbnail_strip(images: list[np.ndarray], hits: list[bool | None], slots: int) -> FramePicture:
    """``slots`` places side by side, the newest of ``images`` (2-D thumbnails) rightmost, with a bar below: green
    for a hit, grey for a miss. Always ``slots`` wide, so the strip never changes size. One log scale for all (the
    brightest pixel of any at 255): a miss's background stays dim next to a hit's spots."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise MissingDependencyError.for_package("pillow", "the dashboard's thumbnail strip") from None
    if not images or len(images) != len(hits):
        raise ValueError(f"{len(images)} thumbnails and {len(hits)} verdicts: need as many of each, at least one")
    rows = max(image.shape[0] for image in images)
    cols = max(image.shape[1] for image in images)
    width = slots * cols + (slots - 1) * STRIP_GAP
    pixels = np.empty((rows + STRIP_GAP + MARK_HEIGHT, width, 3), dtype=np.uint8)
    pixels[:] = STRIP_BACKGROUND
    kept = list(zip(images, hits, strict=True))[-slots:]
    top = max(float(log_signal(image).max()) for image, _ in kept)
    for slot, (image, hit) in enumerate(kept, start=slots - len(kept)):
        left = slot * (cols + STRIP_GAP)
        pixels[: image.shape[0], left : left + image.shape[1]] = COLORMAP[log_scaled(image, top)]
        pixels[rows + STRIP_GAP :, left : left + cols] = VERDICT_COLORS[hit]
    return FramePicture(_png(pixels), width, pixels.shape[0], 1, 0)


class PowderProfile:
    """Mean intensity per |q| bin (1/Å, 4π·sinθ/λ) over the frames added: a virtual powder pattern."""

    def __init__(self, model: DetectorModel, bins: int = 200) -> None:
        rows, cols = model.module_shape
        slow = np.arange(model.n_modules * rows, dtype=np.float64)[:, None]
        fast = np.arange(cols, dtype=np.float64)[None, :]
        shape = (len(slow), cols)
        a_slow, a_fast = model.flat_to_assembled(np.broadcast_to(slow, shape), np.broadcast_to(fast, shape))
        radius_m = np.hypot((a_fast - model.beam_center_px[0]) * model.pixel_size_m,
                            (a_slow - model.beam_center_px[1]) * model.pixel_size_m)  # fmt: skip
        q = 4 * np.pi * np.sin(np.arctan2(radius_m, model.distance_m) / 2) / model.wavelength_a
        lo, hi = float(q.min()), float(q.max())
        hi = hi if hi > lo else lo + 1.0
        self.edges = np.linspace(lo, hi, bins + 1)
        self.index = np.clip(((q - lo) / (hi - lo) * bins).astype(np.int32), 0, bins - 1).ravel()
        self.pixels = np.bincount(self.index, minlength=bins).astype(np.float64)
        self.sums = np.zeros(bins)
        self.frames = 0

    @property
    def q(self) -> np.ndarray:
        return 0.5 * (self.edges[1:] + self.edges[:-1])

    def add(self, data: np.ndarray) -> None:
        values = np.asarray(data, dtype=np.float64).ravel()
        if values.size != self.index.size:
            raise ValueError(f"frame of {values.size} pixels, profile made for {self.index.size}")
        self.sums += np.bincount(self.index, weights=values, minlength=self.sums.size)
        self.frames += 1

    def intensity(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = self.sums / (self.pixels * max(1, self.frames))
        return np.where(self.pixels > 0, mean, 0.0)
