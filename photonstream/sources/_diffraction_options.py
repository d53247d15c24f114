"""The options of the ``synthetic-diffraction`` source (see ``photonstream.sources.synthetic_diffraction``)."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from photonstream.config.base import PluginOptions
from photonstream.sources._crystal import UnitCell
from photonstream.sources._detector_layout import PRESETS
from photonstream.sources._model_changes import ModelChanges

LYSOZYME_CELL = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)
MAX_REFLECTIONS = 3_000_000
MAX_PATTERN = 64
DEFAULT_PATTERN = "on,off"
DataType = Literal["uint16", "uint32", "int32", "float32"]


class SyntheticDiffractionOptions(PluginOptions):
    type: Literal["synthetic-diffraction"] = "synthetic-diffraction"
    detector: Literal["epix10k2m", "jungfrau4m", "eiger16m", "custom"] = Field(
        "epix10k2m", description="detector preset, or 'custom' with shape and pixel_size_m"
    )
    shape: tuple[int, ...] | None = Field(
        None, description="custom detector: (rows, cols) or (modules, rows, cols)", min_length=2, max_length=3
    )
    pixel_size_m: float | None = Field(None, gt=0, le=0.01, description="custom detector pixel size (m)")
    dtype: DataType | None = Field(None, description="data type (default: the preset's; custom: uint16)")
    module_grid: tuple[int, int] | None = Field(None, description="custom detector: module grid (rows, cols)")
    module_gap_px: int | None = Field(None, ge=0, le=1000, description="custom detector: pixels between modules")
    events: int = Field(100, ge=0, description="number of events")
    hit_fraction: float = Field(0.1, ge=0.0, le=1.0, description="probability that an event is a hit")
    seed: int = Field(0, ge=0, description="seed of everything random (same seed, same frames)")
    rate_hz: float = Field(0.0, ge=0.0, description="events per second; 0 = as fast as possible")
    count_time_s: float | None = Field(
        None, gt=0.0, le=3600.0, description="exposure per image the detector reports (default: 1/rate_hz if paced)"
    )
    photon_energy_ev: float = Field(9500.0, ge=1000.0, le=100000.0, description="photon energy (eV)")
    distance_m: float = Field(0.1, gt=0.0, le=100.0, description="sample-detector distance (m)")
    beam_center_px: tuple[float, float] | None = Field(
        None, description="(x = fast, y = slow) in the assembled plane; default: its centre"
    )
    background_photons: float = Field(0.05, ge=0.0, le=10.0, description="mean background photons per pixel")
    background_bank: int = Field(
        0,
        ge=0,
        le=64,
        description="0: draw every frame's background afresh; N: draw N frames' worth once and "
        "give each frame the window at a random offset in it (several times faster; see the module docstring)",
    )
    spot_photons: float = Field(100.0, ge=0.0, description="photons of an average fully recorded reflection")
    spot_sigma_px: float = Field(0.8, ge=0.2, le=10.0, description="Gaussian width of a spot (pixels)")
    unit_cell: tuple[float, float, float, float, float, float] = Field(
        LYSOZYME_CELL, description="a, b, c (Å), alpha, beta, gamma (degrees)"
    )
    space_group: Literal["P43212", "P1"] = Field("P43212", description="space group of the random structure model")
    model: str | None = Field(
        None,
        max_length=4096,
        description="a real atomic model instead of random atoms: '1aki' (bundled hen egg-white lysozyme, "
        "P212121) or a PDB/mmCIF file; its cell, space group and atoms replace unit_cell, space_group and atoms",
    )
    bulk_solvent: bool = Field(
        True, description="with model: add a flat bulk-solvent contribution (k_sol 0.35, B_sol 46)"
    )
    model_changes: ModelChanges | None = Field(
        None,
        description="with model: pump-probe runs, the laser-on (light) model is the model with these changes "
        "applied in order, each {move: <gemmi selection>, by: [dx, dy, dz] Å}, {occupancy: <selection>, to: 0..1} "
        "or {add: [{element, xyz: [x, y, z] Å, b, occupancy}, ...]}; events alternate per laser_pattern",
    )
    laser_pattern: str | None = Field(
        None,
        max_length=512,
        description="with model_changes: the laser on/off pattern over events, repeated by event index, e.g. "
        "'on,off' (the default) or 'on,off,off'; each event's metadata gets laser: true/false",
    )
    atoms: int = Field(100, ge=1, le=5000, description="atoms per asymmetric unit of the random structure model")
    b_factor: float = Field(15.0, ge=0.0, le=200.0, description="isotropic B factor of the model (Å²)")
    resolution_limit_a: float = Field(2.0, ge=0.5, description="highest resolution d_min (Å)")
    crystal_scale_spread: float = Field(
        0.0, ge=0.0, le=2.0, description="σ of ln(scale) between crystals (size, beam overlap): 0 = all alike"
    )
    crystal_b_spread: float = Field(0.0, ge=0.0, le=50.0, description="σ of the crystals' extra B factor (Å²)")
    mosaicity_deg: float = Field(0.1, ge=0.0, le=10.0, description="mosaic spread (degrees)")
    bandwidth: float = Field(0.002, ge=0.0, le=0.2, description="relative X-ray bandwidth Δλ/λ")
    crystal_size_um: float = Field(1.0, gt=0.0, le=1000.0, description="crystal size (µm), sets the rlp width")
    raw_adu: bool = Field(False, description="frames = pedestal + gain·photons in ADU (for calibrate)")
    pedestal_adu: float = Field(1000.0, ge=0.0, description="mean pedestal (ADU) with raw_adu")
    pedestal_spread_adu: float = Field(30.0, ge=0.0, description="pixel-to-pixel pedestal spread (ADU)")
    gain_adu_per_photon: float = Field(40.0, gt=0.0, description="mean gain (ADU per photon) with raw_adu")
    gain_spread: float = Field(0.03, ge=0.0, le=0.5, description="relative pixel-to-pixel gain spread")
    read_noise_adu: float = Field(0.0, ge=0.0, description="Gaussian read noise (ADU) with raw_adu")

    @field_validator("laser_pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        tokens = [token.strip().lower() for token in value.split(",")]
        wrong = [token for token in tokens if token not in ("on", "off")]
        if wrong:
            raise ValueError(f"give on/off tokens separated by commas, e.g. 'on,off'; got {wrong[0]!r}")
        if len(tokens) > MAX_PATTERN:
            raise ValueError(f"{len(tokens)} tokens; at most {MAX_PATTERN}")
        return ",".join(tokens)

    def laser_pattern_in_effect(self) -> str | None:
        """The on/off pattern of a pump-probe run (``laser_pattern``, default on,off); None without model_changes."""
        return None if self.model_changes is None else (self.laser_pattern or DEFAULT_PATTERN)

    def frame_bytes(self) -> tuple[int, str]:
        """Bytes of one frame's data array (detector shape × dtype), and the option that sizes it."""
        if self.detector == "custom":
            shape, dtype, option = tuple(self.shape or ()), self.dtype or "uint16", "shape"
        else:
            preset = PRESETS[self.detector]
            shape, dtype, option = preset.shape, self.dtype or preset.dtype, "detector"
        return math.prod(shape) * np.dtype(dtype).itemsize, option

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticDiffractionOptions:
        if self.model is not None:
            # a value other than the default (not "was it given": a dumped and re-read request gives them all)
            fields = type(self).model_fields
            clashing = [
                name for name in ("unit_cell", "space_group", "atoms") if getattr(self, name) != fields[name].default
            ]
            if clashing:
                raise ValueError(f"{', '.join(clashing)}: the model file sets these; leave them out with model")
            if "\x00" in self.model or not self.model.strip():
                raise ValueError("model: give a bundled model's name (1aki) or a file path")
        elif self.model_changes is not None:
            raise ValueError("model_changes: only with model (a real atomic model, e.g. '1aki')")
        if self.laser_pattern is not None and self.model_changes is None:
            raise ValueError("laser_pattern: only with model and model_changes (a pump-probe run)")
        if self.detector == "custom":
            if self.shape is None:
                raise ValueError("detector 'custom' needs shape: [rows, cols] or [modules, rows, cols]")
            if min(self.shape) < 1:
                raise ValueError(f"shape entries must be positive, got {list(self.shape)}")
            if self.module_grid is not None and len(self.shape) == 3:
                rows, cols = self.module_grid
                if rows < 1 or cols < 1 or rows * cols < self.shape[0]:
                    raise ValueError(f"module_grid {list(self.module_grid)} has no room for {self.shape[0]} modules")
        else:
            fixed = [n for n in ("shape", "pixel_size_m", "module_grid", "module_gap_px") if getattr(self, n)]
            if fixed:
                raise ValueError(f"{', '.join(fixed)} only apply to detector 'custom' (the preset fixes them)")
        a, b, c, alpha, beta, gamma = self.unit_cell
        if min(a, b, c) <= 0 or not all(0 < angle < 180 for angle in (alpha, beta, gamma)):
            raise ValueError("unit_cell needs positive lengths and angles between 0 and 180 degrees")
        if (
            self.model is None
            and self.space_group == "P43212"
            and (a != b or (alpha, beta, gamma) != (90.0, 90.0, 90.0))
        ):
            raise ValueError("space group P43212 needs a tetragonal cell: a = b and all angles 90 (or use P1)")
        cell = UnitCell(*self.unit_cell)
        if not np.isfinite(cell.volume) or cell.volume <= 0:
            raise ValueError("unit_cell angles do not form a valid cell")
        estimate = 4.0 / 3.0 * np.pi * cell.volume / self.resolution_limit_a**3
        if estimate > MAX_REFLECTIONS:
            raise ValueError(
                f"resolution_limit_a {self.resolution_limit_a} Å gives ~{estimate:.0f} reflections for this cell "
                f"(limit {MAX_REFLECTIONS}); use a lower resolution"
            )
        return self
