"""Virtual powder pattern: azimuthal integration of frames with pyFAI, accumulated over a run.

The modules are assembled into the detector plane first (gaps masked), so one flat pyFAI detector describes any
module layout. pyFAI's point of normal incidence is the beam centre in metres from the corner of pixel (0, 0)
(pyFAI puts pixel centres at (i + 0.5)·pixel; ours are at integers). Bins are fixed in q (pyFAI's
``q_A^-1`` = 4π·sinθ/λ) from the lowest to the highest |q| on the detector, so patterns from different workers
add bin by bin: each keeps Σ signal and Σ normalisation per bin, and the pattern is their ratio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photonstream.detector import DetectorModel
from photonstream.errors import MissingDependencyError


@dataclass
class PowderPattern:
    q_pyfai: np.ndarray  # bin centres, 4π sinθ / λ in 1/Å
    sum_signal: np.ndarray
    sum_normalization: np.ndarray
    frames: int = 0

    @property
    def d_spacing(self) -> np.ndarray:
        return 2.0 * np.pi / self.q_pyfai

    @property
    def intensity(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.sum_normalization > 0, self.sum_signal / self.sum_normalization, 0.0)

    def add(self, other: PowderPattern) -> None:
        if not np.allclose(self.q_pyfai, other.q_pyfai):
            raise ValueError("powder patterns have different bins")
        self.sum_signal = self.sum_signal + other.sum_signal
        self.sum_normalization = self.sum_normalization + other.sum_normalization
        self.frames += other.frames

    def to_dict(self) -> dict[str, Any]:
        return {
            "q_pyfai": self.q_pyfai,
            "sum_signal": self.sum_signal,
            "sum_normalization": self.sum_normalization,
            "frames": self.frames,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PowderPattern:
        return cls(
            np.asarray(d["q_pyfai"], dtype=np.float64),
            np.asarray(d["sum_signal"], dtype=np.float64),
            np.asarray(d["sum_normalization"], dtype=np.float64),
            int(d["frames"]),
        )


@dataclass
class PowderAccumulator:
    detector: DetectorModel
    bins: int = 300
    _integrator: Any = field(default=None, init=False, repr=False)
    _mask: np.ndarray | None = field(default=None, init=False, repr=False)
    _range: tuple[float, float] = field(default=(0.0, 1.0), init=False)
    pattern: PowderPattern | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        try:
            from pyFAI.integrator.azimuthal import AzimuthalIntegrator
        except ImportError:
            raise MissingDependencyError.for_package("pyFAI", "the virtual powder pattern") from None
        d = self.detector
        self._integrator = AzimuthalIntegrator(
            dist=d.distance_m,
            poni1=(d.beam_center_px[1] + 0.5) * d.pixel_size_m,
            poni2=(d.beam_center_px[0] + 0.5) * d.pixel_size_m,
            pixel1=d.pixel_size_m,
            pixel2=d.pixel_size_m,
            wavelength=d.wavelength_a * 1e-10,
        )
        self._mask = d.assembled_pixel_mask()
        q = 2.0 * np.pi * self._pixel_q_range()
        self._range = (float(q[0]), float(q[1]))
        centres = np.linspace(q[0], q[1], self.bins + 1)
        self.pattern = PowderPattern(
            0.5 * (centres[1:] + centres[:-1]), np.zeros(self.bins), np.zeros(self.bins), frames=0
        )

    def _pixel_q_range(self) -> np.ndarray:
        """Lowest and highest |q| (1/Å, no 2π) of any pixel."""
        d = self.detector
        slow, fast = np.nonzero(~self._mask)  # type: ignore[operator]
        x = (fast - d.beam_center_px[0]) * d.pixel_size_m
        y = (slow - d.beam_center_px[1]) * d.pixel_size_m
        two_theta = np.arctan(np.hypot(x, y) / d.distance_m)
        q = 2.0 * np.sin(two_theta / 2.0) / d.wavelength_a
        return np.array([q.min(), q.max()])

    def add(self, modules: np.ndarray) -> None:
        assert self.pattern is not None
        image = self.detector.assemble(modules)
        result = self._integrator.integrate1d(
            image, self.bins, unit="q_A^-1", radial_range=self._range, mask=self._mask, correctSolidAngle=True
        )
        self.pattern.sum_signal += np.asarray(result.sum_signal, dtype=np.float64).reshape(-1)
        self.pattern.sum_normalization += np.asarray(result.sum_normalization, dtype=np.float64).reshape(-1)
        self.pattern.frames += 1

    def take(self) -> PowderPattern:
        """The pattern accumulated since the last ``take`` (and start a new one)."""
        assert self.pattern is not None
        taken = self.pattern
        self.pattern = PowderPattern(taken.q_pyfai.copy(), np.zeros(self.bins), np.zeros(self.bins), frames=0)
        return taken
