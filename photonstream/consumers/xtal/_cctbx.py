"""Everything the crystallography consumers take from cctbx (``pip install cctbx-base``), imported lazily.

cctbx-base's wheels carry their own libstdc++. Once a module built against the system libstdc++ with unique C++
symbols is loaded (``scipy.special``, ``scipy.ndimage``/``linalg``/``optimize``, ``hdf5plugin``, ``pyFAI`` among
them), importing cctbx crashes the interpreter with a segmentation fault. ``photonstream.consumers.xtal`` therefore
imports cctbx first when it is installed (``preload``), and ``require_cctbx()`` refuses with a readable error instead of
crashing when that order was not kept. Workers and the merger started with ``python -m photonstream.consumers.xtal``
always get the right order.
"""

from __future__ import annotations

import math
import os
import sys
from functools import lru_cache
from typing import Any

import numpy as np

from photonstream.config.environment import OMP_NUM_THREADS_ENV
from photonstream.errors import MissingDependencyError, PhotonstreamError

# Modules whose import (before cctbx) makes a later cctbx import crash; checked, not exhaustive.
# pvaccess (boost.python) and cctbx's boost.python refuse each other's converters (TypeError) or crash (SIGSEGV).
_CLASHING_MODULES = (
    "scipy.special", "scipy.linalg", "scipy.ndimage", "scipy.optimize", "hdf5plugin", "pyFAI", "pvaccess",
)  # fmt: skip


class ImportOrderError(PhotonstreamError, ImportError):
    """cctbx can no longer be imported safely in this process. (500)"""


def preload() -> bool:
    """Import cctbx now if that is safe and it is installed; True when it is loaded."""
    if "cctbx" in sys.modules:
        return True
    if any(name in sys.modules for name in _CLASHING_MODULES):
        return False
    try:
        import cctbx.uctbx  # noqa: F401
    except ImportError:
        return False
    # cctbx's libomptbx, now loaded, exports stand-in omp_*_lock functions that a later OpenMP library binds to
    # (bitshuffle's, decoding bslz4 frames); with two OpenMP threads contending they abort the process ("omptbx
    # error: deadlock in using lock variable"). OpenMP reads this when it loads, so one thread it is, here and in
    # the processes this one starts, unless the user chose otherwise.
    if not any("libgomp" in name for name in _loaded_libraries()):
        os.environ.setdefault(OMP_NUM_THREADS_ENV, "1")
    return True


def _loaded_libraries() -> list[str]:
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            return [line.rsplit(" ", 1)[-1] for line in maps]
    except OSError:
        return []


def require_cctbx(feature: str) -> Any:
    """The ``cctbx`` package for ``feature``, or a one-line error saying why it cannot be used here."""
    if "cctbx.uctbx" not in sys.modules:
        clashing = [name for name in _CLASHING_MODULES if name in sys.modules]
        if clashing:
            raise ImportOrderError(
                f"{feature} needs cctbx, which crashes when imported after {', '.join(clashing)}; import "
                "photonstream.consumers.xtal first or run `python -m photonstream.consumers.xtal`"
            )
    try:
        import cctbx as package
        import cctbx.uctbx
    except ImportError:
        raise MissingDependencyError.for_package("cctbx-base", feature) from None
    return package


@lru_cache(maxsize=16)
def _symmetry(cell: tuple[float, ...], space_group: str) -> Any:
    require_cctbx("symmetry reduction")
    from cctbx import crystal

    return crystal.symmetry(unit_cell=cell, space_group_symbol=space_group)


def map_to_asu(hkl: np.ndarray, cell: tuple[float, ...], space_group: str) -> np.ndarray:
    """Miller indices moved into the asymmetric unit of the space group (Friedel mates merged)."""
    from cctbx import miller
    from cctbx.array_family import flex

    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    if len(hkl) == 0:
        return np.zeros((0, 3), np.int32)
    indices = flex.miller_index([tuple(int(v) for v in row) for row in hkl])
    mapped = miller.set(_symmetry(tuple(cell), space_group), indices, anomalous_flag=False).map_to_asu()
    return np.array(list(mapped.indices()), dtype=np.int32).reshape(-1, 3)


def laue_rotations(space_group: str) -> np.ndarray:
    """The Laue group's rotation matrices (n, 3, 3) as they act on Miller indices as row vectors (h' = h·R)."""
    require_cctbx("indexing symmetry")
    from cctbx import sgtbx

    group = sgtbx.space_group_info(space_group).group().build_derived_laue_group()
    rotations = [np.array(op.r().as_double(), dtype=np.float64).reshape(3, 3) for op in group.all_ops()]
    return np.rint(np.array(rotations)).astype(np.int64)


def dps_orientation(q: np.ndarray, cell: tuple[float, ...], wavelength_a: float) -> np.ndarray | None:
    """rstbx 1-D FFT indexing + ``force_cell``: the reciprocal matrix A* (q = A*·hkl) or None."""
    require_cctbx("the 'dps' indexing method")
    from cctbx import uctbx
    from rstbx.indexing_api.force_cell import force_cell
    from rstbx.indexing_api.lattice import DPS_primitive_lattice
    from scitbx import matrix
    from scitbx.array_family import flex

    if len(q) < 8:  # the 1-D FFT search needs more than seven vectors
        return None
    target = uctbx.unit_cell(tuple(cell))
    engine = DPS_primitive_lattice(max_cell=1.5 * max(cell[:3]), recommended_grid_sampling_rad=None, horizon_phil=None)
    engine.S0_vector = matrix.col((0.0, 0.0, 1.0 / wavelength_a))
    engine.inv_wave = 1.0 / wavelength_a
    engine.axis = None
    engine.index(reciprocal_space_vectors=flex.vec3_double([tuple(map(float, v)) for v in q]))
    best = force_cell(engine, target)
    if "orientation" not in best:
        return None
    return np.array(best["orientation"].reciprocal_matrix(), dtype=np.float64).reshape(3, 3)


def write_mtz(
    path: str,
    hkl: np.ndarray,
    intensity: np.ndarray,
    sigma: np.ndarray,
    multiplicity: np.ndarray,
    cell: tuple[float, ...],
    space_group: str,
    wavelength_a: float,
) -> None:
    """Merged intensities as an MTZ file (columns I, SIGI, N) through iotbx."""
    require_cctbx("writing MTZ")
    from cctbx import miller
    from cctbx.array_family import flex

    indices = flex.miller_index([tuple(int(v) for v in row) for row in np.asarray(hkl).reshape(-1, 3)])
    miller_set = miller.set(_symmetry(tuple(cell), space_group), indices, anomalous_flag=False)
    intensities = miller.array(
        miller_set, data=flex.double(np.asarray(intensity, float)), sigmas=flex.double(np.asarray(sigma, float))
    ).set_observation_type_xray_intensity()
    dataset = intensities.as_mtz_dataset(column_root_label="I", wavelength=wavelength_a)
    counts = miller.array(miller_set, data=flex.int([int(n) for n in multiplicity]))
    dataset.add_miller_array(counts, column_root_label="N", column_types="I")
    mtz = dataset.mtz_object()
    mtz.set_title("photonstream xtal merge")
    mtz.write(str(path))


def read_mtz(path: str) -> dict[str, Any]:
    """What an MTZ file holds, read back with iotbx: labels, cell, space group, reflections and intensities."""
    require_cctbx("reading MTZ")
    import iotbx.mtz

    mtz = iotbx.mtz.object(str(path))
    arrays = {array.info().label_string(): array for array in mtz.as_miller_arrays()}
    intensity = next(a for label, a in arrays.items() if label.startswith("I,"))
    return {
        "labels": list(arrays),
        "space_group": str(intensity.space_group_info()),
        "unit_cell": list(intensity.unit_cell().parameters()),
        "hkl": np.array(list(intensity.indices()), dtype=np.int32).reshape(-1, 3),
        "intensity": np.array(intensity.data()),
        "sigma": np.array(intensity.sigmas()),
    }


@lru_cache(maxsize=8)
def _possible(cell: tuple[float, ...], space_group: str, d_min: float) -> np.ndarray:
    from cctbx import miller

    full = miller.build_set(_symmetry(cell, space_group), anomalous_flag=False, d_min=d_min)
    indices = full.remove_systematic_absences().indices()
    return np.array(list(indices), dtype=np.int32).reshape(-1, 3)


def possible_reflections(cell: tuple[float, ...], space_group: str, d_min: float) -> np.ndarray:
    """Every reflection of the asymmetric unit to ``d_min`` (Å) that the space group allows (systematic absences
    removed, Friedel mates merged): what completeness counts against."""
    require_cctbx("completeness")
    d_min = math.floor(float(d_min) * 1000) / 1000  # a few cached sets; never one that leaves an observation out
    return _possible(tuple(float(v) for v in cell), space_group, d_min)
