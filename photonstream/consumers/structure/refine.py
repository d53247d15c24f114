"""From merged intensities and a model to R-work and R-free, with cctbx's mmtbx doing the crystallography.

1. French–Wilson (``cctbx.french_wilson``) turns the merged intensities, negative ones included, into amplitudes.
2. The free set: 5 % of the reflections, chosen by a hash of each (asymmetric-unit) Miller index, so a reflection
   is free in every update of the run and in every process, however many reflections the data have by then.
3. ``mmtbx.f_model.manager`` with the flat bulk-solvent model and anisotropic overall scaling
   (``update_all_scales``), then rigid-body refinement of the whole model (``mmtbx.refinement.rigid_body``) and
   grouped B refinement, one B per residue (``mmtbx.refinement.group``): neither needs geometry restraints, so no
   monomer library. Each step runs only while the time budget (``RefineSettings.budget_s``) lasts.

``refine`` returns the refined ``fmodel`` (maps are computed from it, see ``maps``) and the R factors before and
after.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from photonstream.consumers.structure.model import StructureModel
from photonstream.consumers.xtal._cctbx import require_cctbx
from photonstream.errors import ConfigError

FREE_FRACTION_DENOMINATOR = 20  # 1 in 20: the customary 5 % free set
HASH_MULTIPLIER = 2654435761
MIN_REFLECTIONS = 200  # fewer and R-free over 5 % of them is noise
MAX_REFLECTIONS = 2_000_000


@dataclass(frozen=True)
class MergedData:
    """Merged intensities of one data set (a run, or the laser-on or -off frames of a pump-probe run)."""

    hkl: np.ndarray  # (N, 3) int, asymmetric unit
    intensity: np.ndarray
    sigma: np.ndarray
    cell: tuple[float, ...]
    space_group: str

    def __post_init__(self) -> None:
        n = len(self.hkl)
        if np.asarray(self.hkl).reshape(-1, 3).shape[0] != n or len(self.intensity) != n or len(self.sigma) != n:
            raise ConfigError("merged data: hkl, intensity and sigma must have one row per reflection")
        if n > MAX_REFLECTIONS:
            raise ConfigError(f"merged data: {n} reflections, more than the limit of {MAX_REFLECTIONS}")


@dataclass(frozen=True)
class RefineSettings:
    budget_s: float = 20.0  # no new refinement step starts after this
    d_min: float | None = None  # None: all the data
    rigid_body: bool = True  # the stage refines rigid body in its first update only: later data move nothing
    rigid_body_iterations: int = 15
    rigid_body_zones: int = 2  # resolution zones of mmtbx's multiple-zones protocol (its default 5: slower)
    group_b_cycles: int = 2
    group_b_iterations: int = 20


@dataclass
class Refinement:
    fmodel: Any  # mmtbx.f_model.manager, refined
    f_obs: Any  # miller array of amplitudes (French–Wilson)
    r_work_start: float
    r_free_start: float
    r_work: float
    r_free: float
    reflections: int
    free_reflections: int
    d_min: float
    k_sol: float
    b_sol: float
    steps: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def free_flags(hkl: np.ndarray) -> np.ndarray:
    """True for the ~5 % of reflections in the free set: a hash of (h, k, l), the same in every update."""
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3) + 1024
    key = ((hkl[:, 0] << 22) | (hkl[:, 1] << 11) | hkl[:, 2]).astype(np.uint64)
    mixed = (key * np.uint64(HASH_MULTIPLIER)) & np.uint64(0xFFFFFFFF)
    return ((mixed >> np.uint64(8)) % np.uint64(FREE_FRACTION_DENOMINATOR)) == 0


def miller_intensities(data: MergedData, symmetry: Any) -> Any:
    """The merged intensities as a cctbx miller array in the model's symmetry (the data's cell)."""
    from cctbx import crystal, miller
    from cctbx.array_family import flex

    data_symmetry = crystal.symmetry(unit_cell=tuple(data.cell), space_group_info=symmetry.space_group_info())
    indices = flex.miller_index([tuple(int(v) for v in row) for row in np.asarray(data.hkl).reshape(-1, 3)])
    sigma = np.maximum(np.asarray(data.sigma, dtype=np.float64), 1e-6)
    merged = miller.set(data_symmetry, indices, anomalous_flag=False).array(
        data=flex.double(np.asarray(data.intensity, dtype=np.float64)), sigmas=flex.double(sigma)
    )
    return merged.set_observation_type_xray_intensity()


def observed_amplitudes(data: MergedData, symmetry: Any) -> Any:
    """French–Wilson amplitudes (acentric and centric priors by resolution bin) of the allowed reflections: workers
    integrate wherever the lattice predicts a spot, systematic absences too, and those carry no structure."""
    intensities = miller_intensities(data, symmetry).remove_systematic_absences()
    f_obs = intensities.french_wilson(log=io.StringIO())
    return f_obs.select(f_obs.data() > 0)


def _flags_array(f_obs: Any) -> Any:
    from cctbx.array_family import flex

    hkl = np.array(list(f_obs.indices()), dtype=np.int64).reshape(-1, 3)
    return f_obs.array(data=flex.bool(free_flags(hkl).tolist()))


def _check_symmetry(data: MergedData, model: StructureModel) -> None:
    model_group = str(model.symmetry.space_group_info()).replace(" ", "")
    if model_group != data.space_group.replace(" ", ""):
        raise ConfigError(f"model: space group {model_group} does not match the data's {data.space_group}")
    model_cell = np.array(model.symmetry.unit_cell().parameters())
    if not np.allclose(model_cell[:3], np.asarray(data.cell[:3]), rtol=0.05):
        raise ConfigError(f"model: cell {model_cell[:3].round(2).tolist()} is over 5 % from the data's {data.cell[:3]}")


def refine(data: MergedData, model: StructureModel, settings: RefineSettings | None = None) -> Refinement:
    """Scale, refine and score ``model`` against ``data`` (see the module docstring)."""
    settings = settings or RefineSettings()
    require_cctbx("the structure stage")
    import mmtbx.f_model
    import mmtbx.refinement.group as group_refinement
    import mmtbx.refinement.rigid_body as rigid_body
    from cctbx.array_family import flex

    _check_symmetry(data, model)
    began = time.perf_counter()
    seconds: dict[str, float] = {}
    f_obs = observed_amplitudes(data, model.symmetry)
    if settings.d_min is not None:
        f_obs = f_obs.resolution_filter(d_min=settings.d_min)
    if f_obs.size() < MIN_REFLECTIONS:
        raise ConfigError(f"structure: {f_obs.size()} reflections; refinement needs at least {MIN_REFLECTIONS}")
    flags = _flags_array(f_obs)
    seconds["french_wilson"] = time.perf_counter() - began
    fmodel = mmtbx.f_model.manager(f_obs=f_obs, r_free_flags=flags, xray_structure=model.xray_structure())
    fmodel.update_all_scales()
    r_work_start, r_free_start = fmodel.r_work(), fmodel.r_free()
    seconds["scaling"] = time.perf_counter() - began - seconds["french_wilson"]
    steps = ["bulk-solvent and anisotropic scaling"]
    quiet = io.StringIO()
    if settings.rigid_body and time.perf_counter() - began < settings.budget_s:
        clock = time.perf_counter()
        params = rigid_body.master_params.extract()
        params.max_iterations = settings.rigid_body_iterations
        params.bulk_solvent_and_scale = False
        params.number_of_zones = settings.rigid_body_zones
        rigid_body.manager(fmodel=fmodel, params=params, log=quiet)
        fmodel.update_all_scales()
        seconds["rigid_body"] = time.perf_counter() - clock
        steps.append("rigid body")
    if time.perf_counter() - began < settings.budget_s:
        clock = time.perf_counter()
        groups = [flex.size_t(atoms.tolist()) for atoms in model.residue_atoms]
        group_refinement.manager(fmodel=fmodel, selections=groups, refine_adp=True, log=quiet,
                                 number_of_macro_cycles=settings.group_b_cycles,
                                 max_number_of_iterations=settings.group_b_iterations)  # fmt: skip
        fmodel.update_all_scales()
        seconds["group_b"] = time.perf_counter() - clock
        steps.append("grouped B (one per residue)")
    k_sol, b_sol = _bulk_solvent(fmodel)
    return Refinement(
        fmodel=fmodel,
        f_obs=f_obs,
        r_work_start=float(r_work_start),
        r_free_start=float(r_free_start),
        r_work=float(fmodel.r_work()),
        r_free=float(fmodel.r_free()),
        reflections=int(f_obs.size()),
        free_reflections=int(flags.data().count(True)),
        d_min=float(f_obs.d_min()),
        k_sol=k_sol,
        b_sol=b_sol,
        steps=steps,
        seconds={key: round(value, 3) for key, value in seconds.items()},
    )


def _bulk_solvent(fmodel: Any) -> tuple[float, float]:
    """The fitted flat bulk-solvent level and B (their low-resolution-bin values; NaN where not reported)."""
    try:
        k_sol, b_sol = fmodel.k_sol_b_sol_from_k_mask()
        return float(k_sol), float(b_sol)
    except (AttributeError, IndexError, TypeError, RuntimeError):
        return float("nan"), float("nan")
