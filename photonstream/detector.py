"""Detector geometry: flattened pixel coordinates ↔ the assembled plane ↔ lab positions ↔ scattering vectors.

Built from a stream's start message; used by the crystallography workers and the dashboard's pictures. Frames
arrive as ``(modules, rows, cols)`` (or ``(rows, cols)``); spot lists use the flattened frame (slow = module·rows +
row, fast = col; integer = pixel centre). The modules lie flat in one plane at ``distance_m`` along the beam (+z);
where the source describes the layout (``source.layout`` with ``module_origins_px``, as the synthetic source does)
module m's pixel (0, 0) sits at that assembled (slow, fast) position, otherwise the modules are stacked along slow
without gaps. The beam centre is in the assembled frame. Lab x = fast, y = slow (metres); reciprocal vectors in 1/Å
without 2π: q = k_out − k0, |k| = 1/λ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from photonstream.errors import ConfigError
from photonstream.frames import Geometry, StartMessage

HC_EV_ANGSTROM = 12398.41984


@dataclass(frozen=True)
class DetectorModel:
    module_shape: tuple[int, int]  # (rows, cols)
    origins: np.ndarray  # (modules, 2) assembled (slow, fast) of each module's pixel (0, 0)
    pixel_size_m: float
    distance_m: float
    beam_center_px: tuple[float, float]  # (x = fast, y = slow), assembled frame
    wavelength_a: float

    @classmethod
    def for_frames(cls, start: StartMessage | None, shape: tuple[int, ...]) -> DetectorModel:
        """A model for pictures of frames of ``shape``: the start message's layout when it fits, otherwise the
        modules tiled in a square grid around a beam in the middle (geometry defaults where there is no start)."""
        modules = shape[0] if len(shape) == 3 else 1
        rows, cols = int(shape[-2]), int(shape[-1])
        given = (start.source.get("layout") or {}).get("module_origins_px") if start is not None else None
        origins = np.asarray(given if given is not None else [], dtype=np.float64).reshape(-1, 2)
        if len(origins) != modules:
            grid = math.ceil(math.sqrt(modules))
            origins = np.array([[(m // grid) * rows, (m % grid) * cols] for m in range(modules)], dtype=np.float64)
        geometry = start.geometry if start is not None else Geometry()
        height = int(origins[:, 0].max()) + rows
        width = int(origins[:, 1].max()) + cols
        centre = tuple(geometry.beam_center_px) if any(geometry.beam_center_px) else (width / 2, height / 2)
        return cls(
            module_shape=(rows, cols),
            origins=origins,
            pixel_size_m=float(geometry.pixel_size_m),
            distance_m=float(geometry.distance_m),
            beam_center_px=(float(centre[0]), float(centre[1])),
            wavelength_a=HC_EV_ANGSTROM / float(geometry.photon_energy_ev),
        )

    @classmethod
    def from_start(cls, start: StartMessage) -> DetectorModel:
        geometry = start.geometry
        shape = tuple(geometry.detector_shape)
        layout = start.source.get("layout") or {}
        if not shape:
            shape = tuple(int(n) for n in layout.get("data_shape", ()))
        if len(shape) not in (2, 3):
            raise ConfigError(
                f"stream {start.stream_id!r}: geometry.detector_shape {list(shape)} is not (rows, cols) or "
                "(modules, rows, cols); crystallography needs it"
            )
        n_modules = shape[0] if len(shape) == 3 else 1
        rows, cols = int(shape[-2]), int(shape[-1])
        origins = np.asarray(layout.get("module_origins_px", []), dtype=np.float64).reshape(-1, 2)
        if len(origins) != n_modules:
            origins = np.stack([np.arange(n_modules) * rows, np.zeros(n_modules)], axis=1).astype(np.float64)
        return cls(
            module_shape=(rows, cols),
            origins=origins,
            pixel_size_m=float(geometry.pixel_size_m),
            distance_m=float(geometry.distance_m),
            beam_center_px=(float(geometry.beam_center_px[0]), float(geometry.beam_center_px[1])),
            wavelength_a=HC_EV_ANGSTROM / float(geometry.photon_energy_ev),
        )

    @property
    def n_modules(self) -> int:
        return len(self.origins)

    @property
    def assembled_shape(self) -> tuple[int, int]:
        rows, cols = self.module_shape
        return int(self.origins[:, 0].max()) + rows, int(self.origins[:, 1].max()) + cols

    def flat_to_assembled(self, slow: np.ndarray, fast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = self.module_shape[0]
        slow = np.asarray(slow, dtype=np.float64)
        module = np.clip(np.floor((slow + 0.5) / rows).astype(np.int64), 0, self.n_modules - 1)
        origin = self.origins[module]
        return origin[..., 0] + slow - module * rows, origin[..., 1] + np.asarray(fast, dtype=np.float64)

    def assembled_to_flat(
        self, slow: np.ndarray, fast: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(module, row, col) of assembled positions, and whether each lies on a module."""
        rows, cols = self.module_shape
        slow = np.asarray(slow, dtype=np.float64)
        fast = np.asarray(fast, dtype=np.float64)
        module = np.full(slow.shape, -1, dtype=np.int64)
        row = np.zeros_like(slow)
        col = np.zeros_like(fast)
        for m, (origin_slow, origin_fast) in enumerate(self.origins):
            local_row = slow - origin_slow
            local_col = fast - origin_fast
            inside = (local_row >= -0.5) & (local_row < rows - 0.5) & (local_col >= -0.5) & (local_col < cols - 0.5)
            module = np.where(inside, m, module)
            row = np.where(inside, local_row, row)
            col = np.where(inside, local_col, col)
        return module, row, col, module >= 0

    def flat_to_q(self, slow: np.ndarray, fast: np.ndarray) -> np.ndarray:
        """Scattering vectors (N, 3) in 1/Å of flattened pixel positions, assuming elastic scattering."""
        a_slow, a_fast = self.flat_to_assembled(slow, fast)
        x = (a_fast - self.beam_center_px[0]) * self.pixel_size_m
        y = (a_slow - self.beam_center_px[1]) * self.pixel_size_m
        direction = np.stack([x, y, np.full_like(x, self.distance_m)], axis=-1)
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        q = direction / self.wavelength_a
        q[..., 2] -= 1.0 / self.wavelength_a
        return q

    def q_to_assembled(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Where the ray k0 + q meets the detector plane: assembled (slow, fast), and whether it travels forward."""
        k = np.array(q, dtype=np.float64, copy=True)
        k[..., 2] += 1.0 / self.wavelength_a
        forward = k[..., 2] > 1e-9
        kz = np.where(forward, k[..., 2], 1.0)
        distance_px = self.distance_m / self.pixel_size_m
        fast = self.beam_center_px[0] + distance_px * k[..., 0] / kz
        slow = self.beam_center_px[1] + distance_px * k[..., 1] / kz
        return slow, fast, forward

    def assembled_pixel_mask(self) -> np.ndarray:
        """True where the assembled plane has no pixel (gaps between modules)."""
        rows, cols = self.module_shape
        empty = np.ones(self.assembled_shape, dtype=bool)
        for origin_slow, origin_fast in self.origins.astype(np.int64):
            empty[origin_slow : origin_slow + rows, origin_fast : origin_fast + cols] = False
        return empty

    def assemble(self, data: np.ndarray) -> np.ndarray:
        rows, cols = self.module_shape
        modules = np.asarray(data).reshape(self.n_modules, rows, cols)
        image = np.zeros(self.assembled_shape, dtype=np.float32)
        for m, (origin_slow, origin_fast) in enumerate(self.origins.astype(np.int64)):
            image[origin_slow : origin_slow + rows, origin_fast : origin_fast + cols] = modules[m]
        return image

    def max_resolution_q(self) -> float:
        """|q| (1/Å) of the detector corner farthest from the beam: the highest resolution it can record."""
        height, width = self.assembled_shape
        corners_slow = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
        corners_fast = np.array([-0.5, width - 0.5, -0.5, width - 0.5])
        x = (corners_fast - self.beam_center_px[0]) * self.pixel_size_m
        y = (corners_slow - self.beam_center_px[1]) * self.pixel_size_m
        two_theta = np.arctan(np.hypot(x, y) / self.distance_m)
        return float(np.max(2.0 * np.sin(two_theta / 2.0) / self.wavelength_a))
