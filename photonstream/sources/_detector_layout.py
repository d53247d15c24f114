"""Detector presets and the simple planar layout the synthetic diffraction source uses.

Data arrays are ``(modules, rows, cols)`` (or ``(rows, cols)`` for a single panel). Two pixel frames:

* **assembled**: the detector plane, modules on a regular grid with ``gap_px`` empty pixels between neighbours.
  Module ``m`` sits at grid row ``m // grid_cols`` and grid column ``m % grid_cols``; its pixel (0, 0) is at
  assembled ``(slow, fast) = (grid_row * (rows + gap), grid_col * (cols + gap))``. The beam centre is given
  in this frame.
* **flattened**: the data reshaped to ``(modules * rows, cols)`` (CrystFEL's panels-stacked-along-slow-scan
  convention): flattened slow = ``m * rows + row``, fast = ``col``. Ground-truth spots and peak lists use it.

In both frames an integer coordinate is a pixel's centre; pixel ``i`` spans ``[i - 0.5, i + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class DetectorPreset:
    shape: tuple[int, ...]
    pixel_size_m: float
    dtype: str
    grid: tuple[int, int]
    gap_px: int


PRESETS: dict[str, DetectorPreset] = {
    # 16 ePix10k modules of 352 x 384 (100 µm) as a 4 x 4 grid; ~1 mm between modules.
    "epix10k2m": DetectorPreset((16, 352, 384), 100e-6, "uint16", (4, 4), 10),
    # 8 JUNGFRAU modules of 512 x 1024 (75 µm) as 4 rows x 2 columns.
    "jungfrau4m": DetectorPreset((8, 512, 1024), 75e-6, "uint16", (4, 2), 12),
    # EIGER2 X 16M delivered as one 4362 (rows) x 4148 (cols) image, 32-bit counts.
    "eiger16m": DetectorPreset((4362, 4148), 75e-6, "uint32", (1, 1), 0),
}


# The presets' sensors (material, thickness in m), as the real detectors are built.
SENSORS: dict[str, tuple[str, float]] = {
    "epix10k2m": ("Si", 500e-6),
    "jungfrau4m": ("Si", 320e-6),
    "eiger16m": ("Si", 450e-6),
}


def square_grid(n_modules: int) -> tuple[int, int]:
    """The (rows, cols) factorisation of ``n_modules`` closest to square, rows ≥ cols."""
    cols = max(c for c in range(1, int(np.sqrt(n_modules)) + 1) if n_modules % c == 0)
    return n_modules // cols, cols


@dataclass(frozen=True, slots=True)
class PanelLayout:
    data_shape: tuple[int, ...]
    grid: tuple[int, int] = (1, 1)
    gap_px: int = 0

    def __post_init__(self) -> None:
        if len(self.data_shape) not in (2, 3) or min(self.data_shape) < 1:
            raise ValueError(f"detector shape must be (rows, cols) or (modules, rows, cols), got {self.data_shape}")
        if self.grid[0] * self.grid[1] < self.n_modules:
            raise ValueError(f"module grid {self.grid} has no room for {self.n_modules} modules")

    @property
    def n_modules(self) -> int:
        return self.data_shape[0] if len(self.data_shape) == 3 else 1

    @property
    def module_shape(self) -> tuple[int, int]:
        return (self.data_shape[-2], self.data_shape[-1])

    @property
    def flat_shape(self) -> tuple[int, int]:
        rows, cols = self.module_shape
        return (self.n_modules * rows, cols)

    @property
    def assembled_shape(self) -> tuple[int, int]:
        rows, cols = self.module_shape
        grid_rows = -(-self.n_modules // self.grid[1])
        return (
            grid_rows * rows + (grid_rows - 1) * self.gap_px,
            self.grid[1] * cols + (self.grid[1] - 1) * self.gap_px,
        )

    @property
    def assembled_center(self) -> tuple[float, float]:
        """(x = fast, y = slow) of the middle of the assembled plane."""
        slow, fast = self.assembled_shape
        return ((fast - 1) / 2.0, (slow - 1) / 2.0)

    def module_origins(self) -> np.ndarray:
        """(modules, 2) assembled (slow, fast) of each module's pixel (0, 0)."""
        rows, cols = self.module_shape
        m = np.arange(self.n_modules)
        return np.stack([(m // self.grid[1]) * (rows + self.gap_px), (m % self.grid[1]) * (cols + self.gap_px)], axis=1)

    def assembled_to_flat(self, slow: np.ndarray, fast: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Assembled coordinates → (flattened slow, fast, on_pixel); points in gaps or outside get False."""
        rows, cols = self.module_shape
        slow = np.asarray(slow, dtype=np.float64)
        fast = np.asarray(fast, dtype=np.float64)
        grid_row = np.floor((slow + 0.5) / (rows + self.gap_px)).astype(np.int64)
        grid_col = np.floor((fast + 0.5) / (cols + self.gap_px)).astype(np.int64)
        local_slow = slow - grid_row * (rows + self.gap_px)
        local_fast = fast - grid_col * (cols + self.gap_px)
        module = grid_row * self.grid[1] + grid_col
        on_pixel = (
            (grid_row >= 0)
            & (grid_col >= 0)
            & (grid_col < self.grid[1])
            & (module < self.n_modules)
            & (local_slow < rows - 0.5)
            & (local_fast < cols - 0.5)
        )
        return module * rows + local_slow, local_fast, on_pixel

    def flat_to_assembled(self, flat_slow: np.ndarray, fast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, _ = self.module_shape
        flat_slow = np.asarray(flat_slow, dtype=np.float64)
        module = np.floor((flat_slow + 0.5) / rows).astype(np.int64)
        origins = self.module_origins()[np.clip(module, 0, self.n_modules - 1)]
        return origins[..., 0] + flat_slow - module * rows, origins[..., 1] + np.asarray(fast, dtype=np.float64)

    def assemble(self, data: np.ndarray) -> np.ndarray:
        """The data as one assembled image (gaps are zero), for display and checks."""
        rows, cols = self.module_shape
        modules = np.asarray(data).reshape(self.n_modules, rows, cols)
        image = np.zeros(self.assembled_shape, dtype=modules.dtype)
        for m, (s, f) in enumerate(self.module_origins()):
            image[s : s + rows, f : f + cols] = modules[m]
        return image

    def describe(self) -> dict[str, object]:
        """What a consumer needs to rebuild this layout (goes into the start message's source details)."""
        return {
            "data_shape": list(self.data_shape),
            "module_shape": list(self.module_shape),
            "module_grid": list(self.grid),
            "module_gap_px": self.gap_px,
            "assembled_shape": list(self.assembled_shape),
            "module_origins_px": self.module_origins().tolist(),
            "flattened": "slow = module * rows + row, fast = col; integer coordinates are pixel centres",
        }
