"""``synthetic-diffraction``: serial-crystallography stills with ground truth, deterministic for a seed.

    source: {type: synthetic-diffraction, detector: epix10k2m, events: 200, hit_fraction: 0.2, seed: 7}

Each event is a hit (probability ``hit_fraction``) or a miss. A miss is Poisson background only. A hit is a
crystal (default lysozyme, P4(3)2(1)2, a = b = 79.1 Å, c = 37.9 Å) in a random orientation U: reflection hkl has
lab-frame scattering vector q = U·B·hkl (B: columns a*, b*, c*, 1/Å, cell in the standard setting with a along x
and b in the xy plane); the beam runs along +z with k0 = (0, 0, 1/λ). A reflection within three widths of the
Ewald sphere is recorded where the ray k0 + q meets the flat detector plane at ``distance_m`` (lab x = fast,
y = slow). Its expected photons are ``spot_photons`` × |F(hkl)|² / ⟨|F|²⟩ × partiality, where F comes from a
seeded random-atom model (``structure_model_for``) and partiality = exp(-e²/2σ²) of the excitation error e, with
σ from mosaicity, bandwidth and crystal size. Each spot is a 2-D Gaussian of ``spot_sigma_px`` integrated over
pixels and Poisson-sampled.

Multi-module presets lie flat on a regular module grid in one plane (see ``_detector_layout``); the beam centre is
in that assembled frame, ground-truth spots in the flattened frame (slow = module·rows + row, fast = col).

Background: by default each frame draws its own: ~10⁵ sparse counts for a 2-Mpixel detector, ~1 ms of CPU a
frame. ``background_bank: N`` draws N + 1 frames' worth once (the same exact per-pixel Poisson draw) and gives each
frame the window of its pixel count at a random offset in that bank (a copy: ~0.2 ms), for sources that must keep
a high rate on a shared core. Every pixel of every frame is still a Poisson count of the configured mean; what is
lost is independence between frames (two frames may share a shifted stretch of background), which nothing that
reads a frame on its own (hit finding, indexing, classifying) can see. Hits, orientations and spots stay per-frame
draws.

Frame: ``arrays = {"data": ...}``; metadata ``true_hit`` (bool), ``orientation`` (U, 3×3 float64, hits only),
``spots`` (N×3 float32: flattened slow, fast, photons recorded) and ``hkl`` (N×3 int32) of the spots whose centre
falls on a pixel. Pump-probe (``model`` with ``model_changes``): ``laser`` (bool) on every event, by event index
through ``laser_pattern`` (default on,off); laser-on hits diffract from the changed (light) model, normalised by
the dark model's ⟨|F|²⟩, all else drawn alike. With ``raw_adu: true`` the data are ``pedestal + gain × photons``
(+ read noise), rounded and clipped to the dtype, and ``source.pedestal`` / ``source.gain`` (ADU, ADU per photon)
hold the constants.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from photonstream.config.base import PluginOptions
from photonstream.frames import Calibration, Frame, Geometry
from photonstream.sources._atomic_model import simulated_model
from photonstream.sources._crystal import StructureModel, UnitCell, random_rotation, random_structure
from photonstream.sources._detector_layout import PRESETS, SENSORS, PanelLayout, square_grid
from photonstream.sources._diffraction_options import SyntheticDiffractionOptions
from photonstream.sources._pacing import paced_indices
from photonstream.sources._reflection_table import Reflections, atomic_model_reflections, random_model_reflections
from photonstream.sources.base import Shard, SourceInfo, registry

HC_EV_ANGSTROM = 12398.41984

__all__ = ["SyntheticDiffraction", "SyntheticDiffractionOptions"]


def structure_model_for(options: SyntheticDiffractionOptions) -> StructureModel:
    """The structure model a source with these options draws its intensities from (reference |F|²)."""
    return random_structure(
        UnitCell(*options.unit_cell), options.seed, options.space_group, options.atoms, b_factor=options.b_factor
    )


# The standard library's erf and lgamma, elementwise: scipy.special would add ~0.1 s of imports to every run of
# this source (its start-up is part of a stream's request -> first frame time), for a few thousand values a frame.
_erf = np.frompyfunc(math.erf, 1, 1)
_lgamma = np.frompyfunc(math.lgamma, 1, 1)


def _truncated_poisson_cdf(mean: float) -> np.ndarray:
    """CDF of a Poisson count given that it is at least 1, over k = 1, 2, ..."""
    k = np.arange(1, int(mean + 12 * np.sqrt(mean) + 20))
    log_factorial = _lgamma(k + 1.0).astype(np.float64)
    pmf = np.exp(k * np.log(mean) - mean - log_factorial) / -np.expm1(-mean)
    cdf = np.cumsum(pmf)
    cdf[-1] = 1.0
    return cdf


@registry.register
class SyntheticDiffraction:
    Options: ClassVar[type[PluginOptions]] = SyntheticDiffractionOptions

    def __init__(self, options: SyntheticDiffractionOptions) -> None:
        self.options = options
        if options.detector == "custom":
            shape = tuple(options.shape or ())
            grid = options.module_grid or (square_grid(shape[0]) if len(shape) == 3 else (1, 1))
            self.layout = PanelLayout(shape, grid, options.module_gap_px or 0)
            self.pixel_size_m = options.pixel_size_m or 100e-6
            self.dtype = np.dtype(options.dtype or "uint16")
        else:
            preset = PRESETS[options.detector]
            self.layout = PanelLayout(preset.shape, preset.grid, preset.gap_px)
            self.pixel_size_m = preset.pixel_size_m
            self.dtype = np.dtype(options.dtype or preset.dtype)
        beam_center = options.beam_center_px or self.layout.assembled_center
        self.geometry = Geometry(
            pixel_size_m=self.pixel_size_m,
            distance_m=options.distance_m,
            beam_center_px=(float(beam_center[0]), float(beam_center[1])),
            photon_energy_ev=options.photon_energy_ev,
            detector_shape=self.layout.data_shape,
        )
        self.model = None  # a real atomic model (the model option), else the random one of unit_cell/space_group
        if options.model is not None:
            self.model = simulated_model(options.model, options.resolution_limit_a, options.bulk_solvent)
        self.light_model = None  # pump-probe: the model with model_changes, for laser-on events
        pattern = options.laser_pattern_in_effect()  # event i's laser state is cycle[i % len(cycle)]
        self._laser_cycle = None if pattern is None else tuple(token == "on" for token in pattern.split(","))
        if options.model is not None and options.model_changes is not None:
            self.light_model = simulated_model(
                options.model, options.resolution_limit_a, options.bulk_solvent, options.model_changes
            )
        self.cell = UnitCell(*(self.model.cell if self.model is not None else options.unit_cell))
        self.wavelength_a = HC_EV_ANGSTROM / options.photon_energy_ev
        self._shard = Shard()
        self._reflection_table: Reflections | None = None
        self._n_pixels = int(np.prod(self.layout.data_shape))
        self._background_cdf = (
            _truncated_poisson_cdf(options.background_photons) if options.background_photons > 0 else None
        )
        self._bank: np.ndarray | None = None  # with background_bank: the pre-drawn background, flat
        self.pedestal: np.ndarray | None = None
        self.gain: np.ndarray | None = None
        if options.raw_adu:
            rng = np.random.default_rng([options.seed, 0xCA1])
            shape = self.layout.data_shape
            self.pedestal = (options.pedestal_adu + options.pedestal_spread_adu * rng.standard_normal(shape)).astype(
                np.float32
            )
            self.gain = (options.gain_adu_per_photon * (1.0 + options.gain_spread * rng.standard_normal(shape))).astype(
                np.float32
            )

    # -- Source protocol --------------------------------------------------------------------------------------
    def set_shard(self, shard: Shard) -> None:
        self._shard = shard

    def open(self) -> SourceInfo:
        self._tables()
        o = self.options
        owned = sum(1 for i in range(o.events) if self._shard.owns(i))
        details = {
            "generator": "synthetic-diffraction",
            "seed": o.seed,
            "events": o.events,
            "hit_fraction": o.hit_fraction,
            "unit_cell": list(self.cell.as_tuple()),
            "space_group": self.model.space_group if self.model is not None else o.space_group,
            "atoms": self.model.atoms if self.model is not None else o.atoms,
            "model": o.model,
            "bulk_solvent": o.bulk_solvent if o.model is not None else None,
            "model_changes": o.model_dump(mode="json")["model_changes"],
            "laser_pattern": o.laser_pattern_in_effect(),
            "crystal_scale_spread": o.crystal_scale_spread,
            "crystal_b_spread": o.crystal_b_spread,
            "b_factor": o.b_factor,
            "resolution_limit_a": o.resolution_limit_a,
            "mosaicity_deg": o.mosaicity_deg,
            "bandwidth": o.bandwidth,
            "crystal_size_um": o.crystal_size_um,
            "spot_photons": o.spot_photons,
            "spot_sigma_px": o.spot_sigma_px,
            "background_photons": o.background_photons,
            "units": "adu" if o.raw_adu else "photons",
            "dtype": self.dtype.name,
            **stream2_details(o, self.dtype),
            "layout": self.layout.describe(),
            "reciprocal_basis_per_angstrom": self.cell.reciprocal_basis().tolist(),
            "orientation_convention": "q_lab = orientation @ B @ hkl; beam along +z; lab x = fast, y = slow",
        }
        return SourceInfo(
            detector=o.detector,
            geometry=self.geometry,
            calibration=Calibration(),
            expected_events=owned,
            details=details,
        )

    def events(self) -> Iterator[Frame]:
        for index in paced_indices(self.options.events, self._shard, self.options.rate_hz):
            yield self.frame(index)

    def close(self) -> None:
        return None

    # -- generation -------------------------------------------------------------------------------------------
    def frame(self, index: int) -> Frame:
        """Event ``index`` of the run; the same index always gives the same frame (independent of sharding)."""
        o = self.options
        rng = np.random.default_rng([o.seed, index])
        is_hit = bool(rng.random() < o.hit_fraction)
        dtype = np.float32 if o.raw_adu else self.dtype
        if o.background_bank and self._background_cdf is not None:
            bank = self._background_bank(dtype)
            offset = int(rng.integers(0, bank.size - self._n_pixels + 1))
            photons = bank[offset : offset + self._n_pixels].copy()
        else:
            photons = np.zeros(self._n_pixels, dtype=dtype)
            self._add_background(photons, rng)
        metadata: dict[str, object] = {"true_hit": is_hit}
        laser = self.laser_on(index)
        if laser is not None:
            metadata["laser"] = laser
        if is_hit:
            orientation = random_rotation(rng)
            spots, hkl = self._add_spots(photons, orientation, rng, bool(laser))
            metadata.update(orientation=orientation, spots=spots, hkl=hkl)
        else:
            metadata.update(spots=np.zeros((0, 3), np.float32), hkl=np.zeros((0, 3), np.int32))
        data = self._to_output(photons, rng).reshape(self.layout.data_shape)
        return Frame(event=index, arrays={"data": data}, metadata=metadata, timestamp=time.time())

    def laser_on(self, index: int) -> bool | None:
        """Event ``index``'s laser state in a pump-probe run (``model_changes``), else None."""
        if self._laser_cycle is None:
            return None
        return self._laser_cycle[index % len(self._laser_cycle)]

    def relative_intensities(self, laser: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The reflections this source can record (hkl, N×3) and each one's |F|² / ⟨|F|²⟩ of the dark model, in
        the dark state or (``laser``, pump-probe) the light one: what a fully recorded spot's photons scale with."""
        table = self._tables()
        if laser and table.light_intensity is None:
            raise ValueError("laser: this source has no model_changes (no light state)")
        return table.hkl, table.light_intensity if laser else table.relative_intensity

    def _tables(self) -> Reflections:
        if self._reflection_table is None:
            o = self.options
            if self.model is not None:
                table = atomic_model_reflections(self.model, o.resolution_limit_a, self.light_model)
            else:
                table = random_model_reflections(tuple(o.unit_cell), o.space_group, o.seed, o.atoms, o.b_factor,
                                     o.resolution_limit_a)  # fmt: skip
            # Width of each reflection's partiality profile (1/Å): mosaic spread, bandwidth, crystal size.
            self._excitation_width = np.sqrt(
                table.q_squared * np.radians(o.mosaicity_deg) ** 2
                + (0.5 * table.q_squared * self.wavelength_a * o.bandwidth) ** 2
                + (1.0 / (o.crystal_size_um * 1e4)) ** 2
            )
            self._sphere_offset = 0.5 * self.wavelength_a * table.q_squared
            # q_z + λ|q|²/2 = e·(|k| + 1/λ)·λ/2 and |k| = 1/λ - e, so |e| < 3w bounds it by 3w·(1 + 1.5·w·λ).
            w = self._excitation_width
            self._q_z_window = 3.0 * w * (1.0 + 1.5 * w * self.wavelength_a) * 1.01
            self._reflection_table = table
        return self._reflection_table

    def _background_bank(self, dtype: np.dtype) -> np.ndarray:
        """``background_bank`` frames' worth of independent Poisson background, drawn once per source (seeded)."""
        if self._bank is None:
            frames = self.options.background_bank + 1  # N + 1 frames: N·pixels + 1 distinct windows
            bank = np.zeros(frames * self._n_pixels, dtype=dtype)
            rng = np.random.default_rng([self.options.seed, 0xBA4C])
            for part in np.split(bank, frames):
                self._add_background(part, rng)
            self._bank = bank
        return self._bank

    def _add_background(self, photons: np.ndarray, rng: np.random.Generator) -> None:
        """Independent Poisson counts per pixel, drawn sparsely: which pixels are non-zero is a Bernoulli process
        (gaps between them are geometric, i.e. floor of exponentials), their values a zero-truncated Poisson."""
        if self._background_cdf is None:
            return
        mean = self.options.background_photons
        p_nonzero = -np.expm1(-mean)
        expected = self._n_pixels * p_nonzero
        draws = int(expected + 8 * np.sqrt(expected) + 16)
        positions = np.empty(0, dtype=np.int64)
        last = -1
        while True:
            gaps = (rng.standard_exponential(draws) / mean).astype(np.int64) + 1
            chunk = last + np.cumsum(gaps)
            positions = np.concatenate([positions, chunk[chunk < self._n_pixels]])
            if chunk[-1] >= self._n_pixels:
                break
            last = int(chunk[-1])
        uniform = rng.random(positions.size)
        values = np.ones(positions.size, dtype=photons.dtype)
        several = uniform >= self._background_cdf[0]  # at low background nearly every count is one photon
        values[several] = np.searchsorted(self._background_cdf, uniform[several], side="right") + 1
        photons[positions] = values

    def _add_spots(
        self, photons: np.ndarray, orientation: np.ndarray, rng: np.random.Generator, laser: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        o = self.options
        table = self._tables()
        inv_wavelength = 1.0 / self.wavelength_a
        q_z = table.q_crystal @ orientation[2]
        # On the Ewald sphere |k0 + q| = 1/λ, i.e. q_z = -λ|q|²/2; the excitation error is the distance from it.
        # A cheap bound on q_z first keeps the exact test to the few reflections anywhere near the sphere.
        width = self._excitation_width
        candidates = np.flatnonzero(np.abs(q_z + self._sphere_offset) < self._q_z_window)
        k_norm = np.sqrt(table.q_squared[candidates] + 2.0 * q_z[candidates] * inv_wavelength + inv_wavelength**2)
        excitation = inv_wavelength - k_norm
        near = (np.abs(excitation) < 3.0 * width[candidates]) & (q_z[candidates] + inv_wavelength > 0)
        idx = candidates[near]
        partiality = np.exp(-0.5 * (excitation[near] / width[idx]) ** 2)
        relative = table.light_intensity if laser and table.light_intensity is not None else table.relative_intensity
        expected = o.spot_photons * relative[idx] * partiality
        if o.crystal_scale_spread or o.crystal_b_spread:  # this crystal's own scale and B (drawn only then)
            scale = np.exp(o.crystal_scale_spread * rng.standard_normal())
            extra_b = o.crystal_b_spread * rng.standard_normal()
            expected = expected * scale * np.exp(-extra_b * table.q_squared[idx] / 4)
        k = table.q_crystal[idx] @ orientation.T
        k[:, 2] += inv_wavelength
        distance_px = o.distance_m / self.pixel_size_m
        fast = self.geometry.beam_center_px[0] + distance_px * k[:, 0] / k[:, 2]
        slow = self.geometry.beam_center_px[1] + distance_px * k[:, 1] / k[:, 2]
        half = int(np.ceil(3.5 * o.spot_sigma_px))
        height, width_px = self.layout.assembled_shape
        inside = (slow > -half) & (slow < height + half) & (fast > -half) & (fast < width_px + half)
        idx, expected, slow, fast = idx[inside], expected[inside], slow[inside], fast[inside]

        offsets = np.arange(-half, half + 1)
        rows = np.rint(slow).astype(np.int64)[:, None] + offsets  # (N, W) assembled pixel rows
        cols = np.rint(fast).astype(np.int64)[:, None] + offsets
        profile_rows = _pixel_integrated_gaussian(rows, slow, o.spot_sigma_px)
        profile_cols = _pixel_integrated_gaussian(cols, fast, o.spot_sigma_px)
        mean_counts = expected[:, None, None] * profile_rows[:, :, None] * profile_cols[:, None, :]
        counts = rng.poisson(mean_counts)
        flat_rows, flat_cols, on_pixel = self.layout.assembled_to_flat(
            np.broadcast_to(rows[:, :, None], counts.shape), np.broadcast_to(cols[:, None, :], counts.shape)
        )
        counts = np.where(on_pixel, counts, 0)
        recorded = counts.sum(axis=(1, 2))
        hit_pixels = counts > 0
        linear = flat_rows[hit_pixels].astype(np.int64) * self.layout.flat_shape[1] + flat_cols[hit_pixels].astype(
            np.int64
        )
        pixel, which = np.unique(linear, return_inverse=True)
        total = photons[pixel] + np.bincount(which, weights=counts[hit_pixels])
        if photons.dtype.kind in "iu":
            total = np.minimum(total, saturation_value(photons.dtype))  # saturation, as a real detector would
        photons[pixel] = total

        spot_slow, spot_fast, centre_on_pixel = self.layout.assembled_to_flat(slow, fast)
        listed = centre_on_pixel & (recorded > 0)
        spots = np.stack([spot_slow[listed], spot_fast[listed], recorded[listed]], axis=1).astype(np.float32)
        return spots, table.hkl[idx[listed]].astype(np.int32)

    def _to_output(self, photons: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Photon counts already are the output unless ``raw_adu`` asks for pedestal + gain × photons."""
        o = self.options
        if not o.raw_adu:
            return photons
        assert self.pedestal is not None and self.gain is not None
        adu = self.pedestal.ravel() + self.gain.ravel() * photons
        if o.read_noise_adu > 0:
            adu += o.read_noise_adu * rng.standard_normal(adu.size, dtype=np.float32)
        if self.dtype.kind == "f":
            return adu.astype(self.dtype, copy=False)
        info = np.iinfo(self.dtype)
        return np.clip(np.rint(adu), info.min, info.max).astype(self.dtype)


def saturation_value(dtype: np.dtype) -> int:
    """The largest count a photon-counting image holds; the top value is the NODATA marker (EIGER convention)."""
    return int(np.iinfo(dtype).max) - 1


def stream2_details(o: SyntheticDiffractionOptions, dtype: np.dtype) -> dict[str, Any]:
    """What the simulated detector knows of itself, under the Stream V2 start fields' names."""
    details: dict[str, Any] = {"image_dtype": dtype.name, "flatfield_enabled": False}
    details["countrate_correction_enabled"] = False
    sensor = SENSORS.get(o.detector)
    if sensor is not None:
        details["sensor_material"], details["sensor_thickness"] = sensor
    if o.rate_hz > 0:
        details["frame_time"] = 1.0 / o.rate_hz
    count_time = o.count_time_s if o.count_time_s is not None else details.get("frame_time")
    if count_time is not None:
        details["count_time"] = count_time
    if o.detector == "eiger16m":  # photon counting: the usual threshold at half the photon energy
        details["threshold_energy"] = {"data": o.photon_energy_ev / 2}
    if not o.raw_adu and dtype.kind == "u":
        details["saturation_value"] = saturation_value(dtype)
    return details


def _pixel_integrated_gaussian(pixels: np.ndarray, centre: np.ndarray, sigma: float) -> np.ndarray:
    """Fraction of a unit 1-D Gaussian at ``centre`` that falls in each pixel [p - 0.5, p + 0.5); each row of
    ``pixels`` holds consecutive pixels, so one pixel's upper edge is the next one's lower edge."""
    scale = 1.0 / (sigma * np.sqrt(2.0))
    edges = np.concatenate([pixels - 0.5, pixels[:, -1:] + 0.5], axis=1)
    cdf = _erf((edges - centre[:, None]) * scale).astype(np.float64)
    return 0.5 * np.diff(cdf, axis=1)
