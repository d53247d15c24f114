"""Crystallography for the synthetic sources: unit cells, space-group operators, a random-atom structure model
and its structure factors, reciprocal-lattice enumeration and random orientations (numpy only).

Conventions: reciprocal vectors without the 2π factor (|q| = 1/d, in 1/Å); fractional coordinates; the
operators act as x' = R·x + t, so F(h) = Σ_atoms Σ_ops f(s) · exp(2πi h·(R·x + t)).

``StructureModel.intensities`` is the reference |F(hkl)|² that merged intensities from a synthetic run are scored
against; ``random_structure(cell, seed, ...)`` rebuilds the exact model a source used from the details it reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# Space-group operators as in the International Tables, general positions (x, y, z) -> (x', y', z').
_OPERATORS_TEXT: dict[str, tuple[str, ...]] = {
    "P1": ("x,y,z",),
    "P212121": ("x,y,z", "-x+1/2,-y,z+1/2", "-x,y+1/2,-z+1/2", "x+1/2,-y+1/2,-z"),
    "P43212": (
        "x,y,z",
        "-x,-y,z+1/2",
        "-y+1/2,x+1/2,z+3/4",
        "y+1/2,-x+1/2,z+1/4",
        "-x+1/2,y+1/2,-z+3/4",
        "x+1/2,-y+1/2,-z+1/4",
        "y,x,-z",
        "-y,-x,-z+1/2",
    ),
}

SPACE_GROUPS = tuple(_OPERATORS_TEXT)


def _parse_operator(text: str) -> tuple[np.ndarray, np.ndarray]:
    rotation = np.zeros((3, 3), dtype=np.int64)
    translation = np.zeros(3, dtype=np.float64)
    for row, expression in enumerate(text.split(",")):
        term = ""
        for char in expression.replace("-", "+-").split("+"):
            term = char.strip()
            if not term:
                continue
            sign = -1 if term.startswith("-") else 1
            body = term.lstrip("-")
            if body in ("x", "y", "z"):
                rotation[row, "xyz".index(body)] = sign
            else:
                translation[row] += sign * float(Fraction(body))
    return rotation, translation


def space_group_operators(space_group: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (rotation, translation) pairs of a supported space group (see ``SPACE_GROUPS``)."""
    try:
        texts = _OPERATORS_TEXT[space_group]
    except KeyError:
        raise ValueError(f"unsupported space group {space_group!r}; supported: {', '.join(SPACE_GROUPS)}") from None
    return [_parse_operator(t) for t in texts]


def times_transposed(rows: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``rows @ matrix.T`` for (..., 3) rows and a 3×3 matrix, without BLAS: for products this thin, waking
    OpenBLAS's threads costs more CPU than the product (it tripled the synthetic source's start-up on a busy machine).
    """
    return np.einsum("...j,kj->...k", rows, matrix)


@dataclass(frozen=True, slots=True)
class UnitCell:
    """Cell lengths in Å and angles in degrees."""

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0

    def real_basis(self) -> np.ndarray:
        """3×3 matrix whose rows are the a, b, c vectors (Å): a along x, b in the xy plane."""
        alpha, beta, gamma = np.radians([self.alpha, self.beta, self.gamma])
        ax = np.array([self.a, 0.0, 0.0])
        bx = np.array([self.b * np.cos(gamma), self.b * np.sin(gamma), 0.0])
        cx = self.c * np.cos(beta)
        cy = self.c * (np.cos(alpha) - np.cos(beta) * np.cos(gamma)) / np.sin(gamma)
        cz = np.sqrt(max(self.c**2 - cx**2 - cy**2, 0.0))
        return np.array([ax, bx, [cx, cy, cz]])

    def reciprocal_basis(self) -> np.ndarray:
        """3×3 matrix B whose columns are a*, b*, c* (1/Å), so that q = B @ (h, k, l)."""
        return np.linalg.inv(self.real_basis())

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.real_basis())))

    def resolution(self, hkl: np.ndarray) -> np.ndarray:
        """|q| = 1/d (1/Å) of each row of ``hkl``."""
        return np.linalg.norm(times_transposed(np.asarray(hkl, dtype=np.float64), self.reciprocal_basis()), axis=-1)

    def as_tuple(self) -> tuple[float, float, float, float, float, float]:
        return (self.a, self.b, self.c, self.alpha, self.beta, self.gamma)


def enumerate_hkl(cell: UnitCell, d_min: float) -> np.ndarray:
    """All (h, k, l) ≠ 0 with d ≥ ``d_min`` (Å), as an (N, 3) int32 array (both Friedel mates included)."""
    basis = cell.real_basis()
    # |h| ≤ |a| / d_min bounds every index of a reflection inside the 1/d_min sphere.
    limits = [int(np.ceil(np.linalg.norm(row) / d_min)) for row in basis]
    # |q|² = hkl·G*·hkl with the reciprocal metric G*, evaluated on broadcast axes: no (N, 3) array of the whole
    # box (a few times faster for a large cell); np.nonzero keeps the h, k, l order a raveled grid would have.
    reciprocal = cell.reciprocal_basis()
    g = reciprocal.T @ reciprocal
    h = np.arange(-limits[0], limits[0] + 1, dtype=np.float64)[:, None, None]
    k = np.arange(-limits[1], limits[1] + 1, dtype=np.float64)[None, :, None]
    l = np.arange(-limits[2], limits[2] + 1, dtype=np.float64)[None, None, :]  # noqa: E741
    q_squared = (
        (g[0, 0] * h * h + g[1, 1] * k * k)
        + (2 * g[0, 1] * h * k)
        + l * (g[2, 2] * l + 2 * (g[0, 2] * h + g[1, 2] * k))
    )
    keep = (q_squared > 0) & (np.sqrt(np.maximum(q_squared, 0.0)) <= 1.0 / d_min)
    return (np.stack(np.nonzero(keep), axis=1) - np.asarray(limits)).astype(np.int32)


@dataclass(frozen=True)
class StructureModel:
    """Identical atoms at fractional positions (one asymmetric unit), expanded by the space group's operators."""

    cell: UnitCell
    space_group: str
    positions: np.ndarray  # (n_atoms, 3) fractional coordinates of the asymmetric unit
    scattering_factor: float = 6.0  # electrons per atom at s = 0 (carbon-like)
    b_factor: float = 15.0  # isotropic Debye-Waller factor, Å²

    def structure_factors(self, hkl: np.ndarray, chunk_elements: int = 1 << 19) -> np.ndarray:
        """Complex F(hkl) for an (N, 3) array of (whole-number) Miller indices."""
        hkl = np.asarray(hkl).reshape(-1, 3)
        indices = np.rint(hkl).astype(np.int64)
        if not np.array_equal(indices, hkl):
            raise ValueError("Miller indices must be whole numbers")
        cell_positions = np.concatenate([self.positions @ r.T + t for r, t in space_group_operators(self.space_group)])
        # exp(2πi h·x) = exp(2πi h x)·exp(2πi k y)·exp(2πi l z): one table per axis of every index the input uses,
        # so the sum over atoms needs products of table entries instead of a sine and cosine per (reflection, atom)
        low, high = indices.min(axis=0, initial=0), indices.max(axis=0, initial=0)
        tables = []
        for axis in range(3):
            turns = np.multiply.outer(np.arange(low[axis], high[axis] + 1), cell_positions[:, axis])
            turns -= np.rint(turns)  # whole turns removed first: exp of small angles is exact and fast
            tables.append(np.exp(2j * np.pi * turns))
        rows = indices - low
        out = np.empty(len(hkl), dtype=np.complex128)
        chunk = max(1, chunk_elements // len(cell_positions))  # bounds the (chunk, atoms) temporaries
        for start in range(0, len(hkl), chunk):
            part = rows[start : start + chunk]
            terms = tables[0][part[:, 0]]
            terms *= tables[1][part[:, 1]]
            terms *= tables[2][part[:, 2]]
            out[start : start + chunk] = terms.sum(axis=1)
        s = self.cell.resolution(indices)
        return out * self.scattering_factor * np.exp(-self.b_factor * s**2 / 4.0)

    def intensities(self, hkl: np.ndarray) -> np.ndarray:
        """|F(hkl)|² (float64), the reference intensities of this model."""
        return np.abs(self.structure_factors(hkl)) ** 2


def random_structure(
    cell: UnitCell,
    seed: int,
    space_group: str = "P43212",
    n_atoms: int = 100,
    scattering_factor: float = 6.0,
    b_factor: float = 15.0,
) -> StructureModel:
    """A reproducible random-atom model: ``n_atoms`` positions uniform in the cell, from ``seed``."""
    space_group_operators(space_group)  # rejects unknown groups early
    rng = np.random.default_rng([int(seed), 0x5F])
    positions = rng.random((n_atoms, 3))
    return StructureModel(cell, space_group, positions, scattering_factor, b_factor)


def symmetry_unique(hkl: np.ndarray, space_group: str) -> tuple[np.ndarray, np.ndarray]:
    """Reflections equivalent under the Laue group (rotations plus Friedel's law) share |F|².

    Returns (representatives, inverse) with ``representatives[inverse]`` equivalent to ``hkl`` row by row, so
    intensities can be computed once per unique reflection.
    """
    hkl = np.asarray(hkl, dtype=np.int64).reshape(-1, 3)
    span = int(np.abs(hkl).max(initial=0)) + 1
    width = 2 * span + 1
    # (h + span, k + span, l + span) as digits base ``width``: the key orders reflections, one key per reflection.
    # The representative is the equivalent h' = ±h·R with the largest key; key(h·R) - key offset = h·(R·weights).
    weights = np.array([width * width, width, 1], dtype=np.int64)
    rotations = [rotation for rotation, _ in space_group_operators(space_group)]
    columns = np.stack([sign * (rotation @ weights) for rotation in rotations for sign in (1, -1)], axis=1)
    best_key = (hkl @ columns).max(axis=1)
    keys, inverse = np.unique(best_key, return_inverse=True)
    digits = keys + span * weights.sum()
    representatives = np.stack([digits // (width * width), digits // width % width, digits % width], axis=1) - span
    return representatives, inverse.reshape(-1)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix drawn uniformly from SO(3) (normalised Gaussian quaternion)."""
    w, x, y, z = rng.standard_normal(4)
    return _quaternion_matrix(w, x, y, z)


def _quaternion_matrix(w: float, x: float, y: float, z: float) -> np.ndarray:
    n = np.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )
