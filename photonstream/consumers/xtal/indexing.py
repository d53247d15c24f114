"""Indexing a still against a known unit cell: find the orientation U with q_obs ≈ U·B·hkl for integer hkl.

Two methods:

* ``pairs`` (default, numpy): a known-cell search. For seed spots of low resolution (few reflections share their
  |q|) the candidate hkl are those with |B·hkl| ≈ |q|; the first spot of a pair only needs one hkl per Laue-group
  orbit (the others give symmetry-equivalent orientations). A candidate pair (h1, h2) must also match the distance
  |q1 − q2|; each surviving pair fixes U (the two vectors and their cross product), and U is scored by how many
  spots lie within ``tolerance`` of a lattice point. The best U is refined by orthogonal Procrustes on the indexed
  spots (cell held fixed) and, for the cell report, by an unconstrained least-squares A = U·B.
* ``dps`` (cctbx): rstbx's 1-D FFT basis search (``dps_extended``) followed by ``force_cell`` onto the known cell,
  then the same refinement. About a second per still per core; needs ``cctbx-base``.

Conventions as in the synthetic source: B's columns are a*, b*, c* (1/Å, no 2π), cell in the standard setting with
a along x and b in the xy plane; q in the lab frame with the beam along +z.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from photonstream.sources._crystal import UnitCell, enumerate_hkl

IndexingMethod = Literal["pairs", "dps"]


@dataclass(frozen=True)
class IndexingSettings:
    method: IndexingMethod = "pairs"
    tolerance: float = 0.25  # fraction of the shortest reciprocal axis within which a spot counts as indexed
    min_indexed: int = 12  # fewest indexed spots for a solution
    min_fraction: float = 0.5  # and at least this fraction of the spots used
    seed_spots: int = 10  # low-resolution spots tried as the first/second vector of a pair
    max_spots: int = 200  # the brightest spots used for indexing


@dataclass(frozen=True)
class IndexingResult:
    orientation: np.ndarray  # U, 3×3 rotation: q_lab = U @ B @ hkl with the known B
    a_matrix: np.ndarray  # unconstrained least-squares A (q = A @ hkl), for the cell
    cell: tuple[float, float, float, float, float, float]  # from A
    hkl: np.ndarray  # (N,) integer hkl of every input spot (rows of unindexed spots are arbitrary)
    indexed: np.ndarray  # (N,) bool
    rmsd_q: float  # rms |q_obs − U·B·hkl| over indexed spots (1/Å)

    @property
    def n_indexed(self) -> int:
        return int(self.indexed.sum())


def cell_from_a_matrix(a_matrix: np.ndarray) -> tuple[float, float, float, float, float, float]:
    """Cell (Å, degrees) of the lattice whose reciprocal basis vectors are the columns of ``a_matrix``."""
    real = np.linalg.inv(a_matrix)  # rows are a, b, c (q = A h  ⇔  h = A⁻¹ q, and A⁻¹'s rows are the real axes)
    lengths = np.linalg.norm(real, axis=1)
    a, b, c = real

    def angle(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.degrees(np.arccos(np.clip(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)), -1.0, 1.0))))

    return (float(lengths[0]), float(lengths[1]), float(lengths[2]), angle(b, c), angle(a, c), angle(a, b))


def nearest_rotation(matrix: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(matrix)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


class KnownCellIndexer:
    """Indexes stills against one cell; build once per stream (it precomputes the candidate reflections)."""

    def __init__(
        self,
        cell: UnitCell,
        wavelength_a: float,
        laue_rotations: np.ndarray | None = None,
        settings: IndexingSettings = IndexingSettings(),
        d_min_seed: float = 6.0,
    ) -> None:
        self.cell = cell
        self.wavelength_a = wavelength_a
        self.settings = settings
        self.b_matrix = cell.reciprocal_basis()
        self.b_inverse = np.linalg.inv(self.b_matrix)
        spacing = 1.0 / np.linalg.norm(cell.real_basis(), axis=1)  # |a*| etc. for orthogonal cells; a lower bound
        self.tolerance_q = settings.tolerance * float(
            min(np.min(np.linalg.norm(self.b_matrix, axis=0)), np.min(spacing))
        )
        rotations = np.eye(3, dtype=np.int64)[None] if laue_rotations is None else np.asarray(laue_rotations)
        self.laue_rotations = rotations
        self._seed_hkl = enumerate_hkl(cell, d_min_seed).astype(np.float64)
        self._seed_q = self._seed_hkl @ self.b_matrix.T
        self._seed_length = np.linalg.norm(self._seed_q, axis=1)
        self._representative = self._orbit_representatives(self._seed_hkl.astype(np.int64))
        self.d_min_seed = d_min_seed

    def _orbit_representatives(self, hkl: np.ndarray) -> np.ndarray:
        """True for one member of each orbit of the Laue group (rotations and Friedel mates)."""
        span = int(np.abs(hkl).max(initial=0)) + 1
        width = 2 * span + 1
        keys = []
        for rotation in self.laue_rotations:
            for sign in (1, -1):
                equivalent = sign * (hkl @ rotation) + span
                keys.append((equivalent[:, 0] * width + equivalent[:, 1]) * width + equivalent[:, 2])
        own = ((hkl[:, 0] + span) * width + hkl[:, 1] + span) * width + hkl[:, 2] + span
        return own == np.max(np.stack(keys), axis=0)

    # -- public -----------------------------------------------------------------------------------------------
    def index(self, q: np.ndarray) -> IndexingResult | None:
        """Index spots given as scattering vectors (N, 3), brightest first; None when no orientation fits."""
        q = np.asarray(q, dtype=np.float64)[: self.settings.max_spots]
        if len(q) < max(3, self.settings.min_indexed):
            return None
        orientation = self._dps_orientation(q) if self.settings.method == "dps" else self._pair_search(q)
        if orientation is None:
            return None
        return self._refine(q, orientation)

    def indexed_count(self, q: np.ndarray, orientation: np.ndarray) -> int:
        return int(self._score(q, orientation[None])[0])

    # -- pair search ------------------------------------------------------------------------------------------
    def _score(self, q: np.ndarray, orientations: np.ndarray) -> np.ndarray:
        """Spots within tolerance of a lattice point, for each of a stack of orientations (K, 3, 3)."""
        # h = B⁻¹ Uᵀ q; the residual |q − U B round(h)| = |B (h − round(h))| (U is a rotation).
        to_fractional = self.b_inverse @ orientations.transpose(0, 2, 1)  # (K, 3, 3)
        fractional = q @ to_fractional.transpose(0, 2, 1)  # (K, N, 3)
        residual = (fractional - np.rint(fractional)) @ self.b_matrix.T
        return ((residual * residual).sum(axis=2) < self.tolerance_q**2).sum(axis=1)

    def _pair_search(self, q: np.ndarray) -> np.ndarray | None:
        s = self.settings
        lengths = np.linalg.norm(q, axis=1)
        usable = np.flatnonzero((lengths > 0) & (lengths < 1.0 / self.d_min_seed - self.tolerance_q))
        if len(usable) < 2:
            return None
        seeds = usable[np.argsort(lengths[usable], kind="stable")][: s.seed_spots]
        needed = max(s.min_indexed, int(np.ceil(s.min_fraction * len(q))))
        best: tuple[int, np.ndarray | None] = (0, None)
        for i_pos, i in enumerate(seeds):
            first = np.flatnonzero(self._representative & (np.abs(self._seed_length - lengths[i]) < self.tolerance_q))
            if first.size == 0:
                continue
            for j in seeds[i_pos + 1 :]:
                orientations = self._pair_orientations(q[i], q[j], lengths[j], first)
                if orientations is None:
                    continue
                scores = self._score(q, orientations)
                k = int(np.argmax(scores))
                if scores[k] > best[0]:
                    best = (int(scores[k]), orientations[k])
                if best[0] >= needed and best[0] >= 0.8 * len(q):
                    return best[1]
        return best[1] if best[0] >= needed else None

    def _pair_orientations(
        self, q1: np.ndarray, q2: np.ndarray, length2: float, first: np.ndarray
    ) -> np.ndarray | None:
        second = np.flatnonzero(np.abs(self._seed_length - length2) < self.tolerance_q)
        if second.size == 0:
            return None
        separation = np.linalg.norm(q1 - q2)
        v1 = self._seed_q[first]
        v2 = self._seed_q[second]
        distance = np.linalg.norm(v1[:, None, :] - v2[None, :, :], axis=2)
        pair_1, pair_2 = np.nonzero(np.abs(distance - separation) < self.tolerance_q)
        if pair_1.size == 0:
            return None
        crystal = _frames(v1[pair_1], v2[pair_2])
        lab = _frames(q1[None], q2[None])
        if crystal is None or lab is None:
            return None
        good = np.isfinite(crystal).all(axis=(1, 2))
        if not good.any():
            return None
        return np.einsum("ij,kmj->kim", lab[0], crystal[good])  # U = F_lab · F_crystalᵀ

    # -- cctbx route ------------------------------------------------------------------------------------------
    def _dps_orientation(self, q: np.ndarray) -> np.ndarray | None:
        from photonstream.consumers.xtal._cctbx import dps_orientation

        a_star = dps_orientation(q, self.cell.as_tuple(), self.wavelength_a)
        if a_star is None:
            return None
        rotation = a_star @ self.b_inverse
        # force_cell may return a left-handed basis; hkl → −hkl (Friedel mates) makes it a proper rotation.
        return nearest_rotation(-rotation if np.linalg.det(rotation) < 0 else rotation)

    # -- refinement -------------------------------------------------------------------------------------------
    def _refine(self, q: np.ndarray, orientation: np.ndarray, rounds: int = 3) -> IndexingResult | None:
        s = self.settings
        for _ in range(rounds):
            hkl, indexed = self._assign(q, orientation)
            if indexed.sum() < 3:
                return None
            # Orthogonal Procrustes: the rotation taking B·hkl onto q_obs for the indexed spots.
            orientation = nearest_rotation(q[indexed].T @ (hkl[indexed] @ self.b_matrix.T))
        hkl, indexed = self._assign(q, orientation)
        if indexed.sum() < max(s.min_indexed, s.min_fraction * len(q)):
            return None
        a_matrix = np.linalg.lstsq(hkl[indexed].astype(np.float64), q[indexed], rcond=None)[0].T
        residual = q[indexed] - hkl[indexed] @ (orientation @ self.b_matrix).T
        return IndexingResult(
            orientation=orientation,
            a_matrix=a_matrix,
            cell=cell_from_a_matrix(a_matrix),
            hkl=hkl,
            indexed=indexed,
            rmsd_q=float(np.sqrt(np.mean(np.einsum("ij,ij->i", residual, residual)))),
        )

    def _assign(self, q: np.ndarray, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fractional = q @ orientation @ self.b_inverse.T  # (B⁻¹ Uᵀ q)ᵀ
        hkl = np.rint(fractional)
        residual = (fractional - hkl) @ self.b_matrix.T
        indexed = (np.einsum("ij,ij->i", residual, residual) < self.tolerance_q**2) & np.any(hkl != 0, axis=1)
        return hkl.astype(np.int64), indexed


def _frames(v1: np.ndarray, v2: np.ndarray) -> np.ndarray | None:
    """Orthonormal frames (K, 3, 3), columns e1 ∥ v1, e3 ∥ v1 × v2, e2 = e3 × e1; NaN where v1 ∥ v2."""
    e1 = v1 / np.linalg.norm(v1, axis=1, keepdims=True)
    normal = np.cross(v1, v2)
    norm = np.linalg.norm(normal, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        e3 = np.where(norm > 1e-9 * np.linalg.norm(v1, axis=1, keepdims=True) ** 2, normal / norm, np.nan)
    e2 = np.cross(e3, e1)
    return np.stack([e1, e2, e3], axis=2)
