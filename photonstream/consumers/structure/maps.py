"""Electron-density maps from a refinement: σA-weighted 2mFo−DFc and mFo−DFc, the light−dark difference map, the
strongest peaks, MTZ and CCP4 files, and a map section for the dashboard.

The σA weights m and D are mmtbx's (``fmodel.electron_density_map``), from the free reflections' agreement by
resolution bin. The pump-probe difference map has coefficients (F_light − k·F_dark)·exp(iφ_model) over the
reflections both data sets have, k the least-squares scale of the dark amplitudes onto the light ones and φ the
phases of the model refined against the dark data (the isomorphous difference map of time-resolved
crystallography). Peaks are searched over the asymmetric unit (cctbx's ``peak_search``: symmetry copies are one
peak), heights in σ of the map over the unit cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photonstream.consumers.structure.model import StructureModel
from photonstream.consumers.structure.refine import Refinement, free_flags

RESOLUTION_FACTOR = 0.25  # grid spacing d_min/4: peaks are not lost between grid points
MAX_PEAKS = 20


@dataclass(frozen=True)
class Peak:
    sign: int  # +1 positive density, -1 negative
    height_sigma: float
    site_frac: tuple[float, float, float]
    xyz: tuple[float, float, float]  # Cartesian, Å
    residue: str
    atom: str
    distance_a: float  # to that atom

    def as_dict(self) -> dict[str, Any]:
        return {
            "sign": "+" if self.sign > 0 else "-",
            "height_sigma": round(self.height_sigma, 2),
            "xyz": [round(v, 3) for v in self.xyz],
            "residue": self.residue,
            "atom": self.atom,
            "distance_a": round(self.distance_a, 2),
        }


def map_coefficients(refinement: Refinement) -> dict[str, Any]:
    """The σA-weighted 2mFo−DFc and mFo−DFc coefficients (Fourier coefficients as complex miller arrays)."""
    maps = refinement.fmodel.electron_density_map()
    return {
        "2mFo-DFc": maps.map_coefficients(map_type="2mFo-DFc", isotropize=True, fill_missing=False),
        "mFo-DFc": maps.map_coefficients(map_type="mFo-DFc", isotropize=True, fill_missing=False),
    }


def difference_coefficients(light: Any, dark_refinement: Refinement) -> tuple[Any, float]:
    """(F_light − k·F_dark)·exp(iφ_model) over the reflections common to both, and k."""
    from cctbx.array_family import flex

    fmodel = dark_refinement.fmodel
    dark, calculated = fmodel.f_obs(), fmodel.f_model()
    light, dark = light.common_sets(dark)  # the same reflections, in the same order
    light_values, dark_values = np.array(light.data()), np.array(dark.data())
    phase_of = dict(zip(calculated.indices(), calculated.phases().data(), strict=True))
    phases = flex.double([phase_of[index] for index in light.indices()])
    scale = float(np.dot(light_values, dark_values) / max(np.dot(dark_values, dark_values), 1e-30))
    difference = light.array(data=flex.double((light_values - scale * dark_values).tolist()))
    return difference.phase_transfer(phase_source=phases, deg=False), scale


def sigma_map(coefficients: Any, with_symmetry: bool = False) -> Any:
    """The map of ``coefficients`` on a d_min/4 grid, in units of its own σ over the cell."""
    from cctbx import maptbx

    flags = maptbx.use_space_group_symmetry if with_symmetry else None
    fft = coefficients.fft_map(resolution_factor=RESOLUTION_FACTOR, symmetry_flags=flags)
    fft.apply_sigma_scaling()
    return fft


def peaks(coefficients: Any, model: StructureModel, count: int = MAX_PEAKS, cutoff_sigma: float = 3.0) -> list[Peak]:
    """The strongest positive and negative peaks of the map of ``coefficients``, strongest first."""
    from cctbx import maptbx

    found: list[Peak] = []
    cell = coefficients.unit_cell()
    for sign in (1, -1):
        fft = sigma_map(coefficients if sign > 0 else coefficients * -1, with_symmetry=True)
        parameters = maptbx.peak_search_parameters(peak_search_level=1, max_peaks=count, peak_cutoff=cutoff_sigma,
                                                   interpolate=True, min_distance_sym_equiv=1.0,
                                                   max_clusters=count)  # fmt: skip
        search = fft.peak_search(parameters=parameters, verify_symmetry=False).all(max_clusters=count)
        for site, height in zip(search.sites(), search.heights(), strict=True):
            residue, atom, distance = model.nearest_residue(tuple(site))
            xyz = cell.orthogonalize(tuple(site))
            found.append(Peak(sign, float(height), tuple(site), tuple(xyz), residue, atom, distance))  # type: ignore[arg-type]
    found.sort(key=lambda peak: -peak.height_sigma)
    return found[:count]


def map_values_at(fft: Any, sites_cart: np.ndarray) -> np.ndarray:
    """The (σ-scaled) map at Cartesian points, by trilinear interpolation."""
    real_map = fft.real_map_unpadded()
    cell = fft.unit_cell()
    return np.array([real_map.eight_point_interpolation(cell.fractionalize(tuple(map(float, xyz))))
                     for xyz in sites_cart])  # fmt: skip


def section(fft: Any, centre_cart: tuple[float, float, float], half_width_a: float = 8.0, step_a: float = 0.5) -> dict:
    """A square section of the map in the plane z = centre's z (Cartesian), for a picture: values in σ, row by
    row from low y."""
    n = round(2 * half_width_a / step_a) + 1
    offsets = np.linspace(-half_width_a, half_width_a, n)
    x0, y0, z0 = centre_cart
    points = np.array([(x0 + dx, y0 + dy, z0) for dy in offsets for dx in offsets])
    values = map_values_at(fft, points).reshape(n, n)
    return {"centre": [round(v, 3) for v in centre_cart], "step_a": step_a, "size": n,
            "values": np.round(values, 2).tolist()}  # fmt: skip


def write_mtz(path: Path, refinement: Refinement, coefficients: dict[str, Any], wavelength_a: float = 1.0) -> None:
    """Amplitudes, the free set, and the map coefficients under the labels Coot opens by default (FWT/PHWT,
    DELFWT/PHDELWT; the light−dark map as FDIFF/PHDIFF)."""
    from cctbx.array_family import flex

    f_obs = refinement.f_obs
    dataset = f_obs.as_mtz_dataset(column_root_label="FP", wavelength=wavelength_a)
    hkl = np.array(list(f_obs.indices()), dtype=np.int64).reshape(-1, 3)
    free = f_obs.array(data=flex.int((~free_flags(hkl)).astype(int).tolist()))  # CCP4: 0 = free
    dataset.add_miller_array(free, column_root_label="FreeR_flag", column_types="I")
    labels = {"2mFo-DFc": ("FWT", "PHWT"), "mFo-DFc": ("DELFWT", "PHDELWT"), "light-dark": ("FDIFF", "PHDIFF")}
    for name, array in coefficients.items():
        amplitude, phase = labels[name]
        dataset.add_miller_array(array, column_root_label=amplitude)
        _rename_column(dataset, f"PHI{amplitude}", phase)
    mtz = dataset.mtz_object()
    mtz.set_title("photonstream structure")
    mtz.write(str(path))


def _rename_column(dataset: Any, old: str, new: str) -> None:
    for column in dataset.columns():
        if column.label() == old:
            column.set_label(new)


def write_ccp4(path: Path, fft: Any) -> None:
    """The whole unit cell as a CCP4/MRC map (Coot, PyMOL, ChimeraX read it)."""
    # a list of our own each time: cctbx appends to its default labels list, and asserts at ten (the 9th map)
    fft.as_ccp4_map(file_name=str(path), labels=["photonstream structure stage"])
