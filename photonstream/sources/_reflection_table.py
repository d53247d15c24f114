"""The reflections ``synthetic-diffraction`` can record: hkl to its limit, q in the crystal frame and relative |F|²,
of the random-atom model or of a real atomic model (and, pump-probe, of its light state). Cached per process."""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from photonstream.sources._atomic_model import AtomicModel
from photonstream.sources._crystal import UnitCell, enumerate_hkl, random_structure, symmetry_unique, times_transposed


@dataclass(frozen=True, slots=True)
class Reflections:
    hkl: np.ndarray  # (N, 3) int32
    q_crystal: np.ndarray  # (N, 3) float64, B @ hkl
    q_squared: np.ndarray  # (N,) |q|²
    relative_intensity: np.ndarray  # (N,) |F|² / <|F|²>
    light_intensity: np.ndarray | None = None  # pump-probe: the light model's |F|², over the same dark <|F|²>


@lru_cache(maxsize=8)
def random_model_reflections(
    cell: tuple[float, ...], space_group: str, seed: int, atoms: int, b_factor: float, d_min: float
) -> Reflections:
    unit_cell = UnitCell(*cell)
    hkl = enumerate_hkl(unit_cell, d_min)
    model = random_structure(unit_cell, seed, space_group, atoms, b_factor=b_factor)
    unique, inverse = symmetry_unique(hkl, space_group)
    return reflection_table(unit_cell, hkl, model.intensities(unique)[inverse])


@lru_cache(maxsize=4)
def atomic_model_reflections(model: AtomicModel, d_min: float, light: AtomicModel | None = None) -> Reflections:
    unit_cell = UnitCell(*model.cell)
    hkl = enumerate_hkl(unit_cell, d_min)
    table = reflection_table(unit_cell, hkl, model.intensities(hkl))
    if light is None:
        return table
    # One normalisation for both states: a change that makes the whole crystal scatter less stays visible.
    return replace(table, light_intensity=light.intensities(table.hkl) / model.intensities(table.hkl).mean())


def reflection_table(unit_cell: UnitCell, hkl: np.ndarray, intensity: np.ndarray) -> Reflections:
    present = intensity > 1e-9 * intensity.max(initial=0.0)  # drops systematic absences
    hkl, intensity = hkl[present], intensity[present]
    q = times_transposed(hkl, unit_cell.reciprocal_basis())
    return Reflections(hkl, q, np.einsum("ij,ij->i", q, q), intensity / intensity.mean())
