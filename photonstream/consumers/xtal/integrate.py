"""Summation integration of an indexed still.

Every reflection up to the resolution the detector reaches is predicted with the known cell: q = U·B·hkl. Those
close enough to the Ewald sphere are projected onto the detector. "Close enough" follows the reflections' own
width: mosaic spread makes it grow with |q|, so ``ExcitationModel`` fits e² ≈ α + β·|q|² to the excitation errors
of the indexed spots (running sums over the frames seen) and the cutoff is ``cutoff_sigmas`` times that rms. A
cutoff that followed the widest reflections instead would take in mostly unexcited low-resolution reflections
and bias their mean intensity low; a tight one (1 rms) keeps the nearly fully recorded reflections, which narrows
the spread of partialities the merger has to average out (on the synthetic runs in the tests: CC with the truth
0.95 at 1 rms against 0.87 at 2.5 rms, for the same frames). A spot whose
``(2·box_half + 1)²`` box lies on one module is integrated: I = Σ box − n_box·bg, with bg the mean of the ring of
``ring_px`` pixels around the box after the pixels of any neighbouring spot (above median + 4√(median + 1)) are
left out, and σ² = Σ box + n_box²·bg / n_ring (Poisson counting statistics, data in photons). No partiality
correction: the intensities are partial and the merger averages many of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from photonstream.detector import DetectorModel
from photonstream.sources._crystal import UnitCell, enumerate_hkl


@dataclass(frozen=True)
class IntegrationSettings:
    box_half: int = 2
    ring_px: int = 2
    excitation_cutoff: float | None = None  # fixed cutoff (1/Å); None: the fitted model's
    cutoff_sigmas: float = 1.0
    min_cutoff: float = 1e-4
    max_cutoff: float = 4e-3


class ExcitationModel:
    """Running least-squares fit of e² = α + β·|q|² over indexed spots (e: excitation error, 1/Å)."""

    def __init__(self) -> None:
        self._sums = np.zeros(5)  # n, Σx, Σx², Σy, Σxy with x = |q|², y = e²

    def update(self, q_length: np.ndarray, excitation: np.ndarray) -> None:
        x = np.asarray(q_length, dtype=np.float64) ** 2
        y = np.asarray(excitation, dtype=np.float64) ** 2
        self._sums += [len(x), x.sum(), (x * x).sum(), y.sum(), (x * y).sum()]

    @property
    def observations(self) -> int:
        return int(self._sums[0])

    def coefficients(self) -> tuple[float, float]:
        n, sx, sxx, sy, sxy = self._sums
        if n < 3:
            return 0.0, 0.0
        determinant = n * sxx - sx * sx
        beta = (n * sxy - sx * sy) / determinant if determinant > 0 else 0.0
        beta = max(beta, 0.0)
        alpha = max((sy - beta * sx) / n, 0.0)
        return float(alpha), float(beta)

    def rms(self, q_length: np.ndarray) -> np.ndarray:
        alpha, beta = self.coefficients()
        return np.sqrt(alpha + beta * np.asarray(q_length, dtype=np.float64) ** 2)


@dataclass(frozen=True)
class Reflections:
    hkl: np.ndarray  # (N, 3) int32
    intensity: np.ndarray  # (N,) float64
    sigma: np.ndarray  # (N,) float64
    slow: np.ndarray  # (N,) flattened predicted position
    fast: np.ndarray

    def __len__(self) -> int:
        return len(self.hkl)


class Integrator:
    def __init__(
        self, detector: DetectorModel, cell: UnitCell, settings: IntegrationSettings = IntegrationSettings()
    ) -> None:
        self.detector = detector
        self.settings = settings
        self.b_matrix = cell.reciprocal_basis()
        d_min = 1.0 / detector.max_resolution_q()
        self.hkl = enumerate_hkl(cell, d_min)
        self._q_crystal = self.hkl @ self.b_matrix.T
        self._q_squared = np.einsum("ij,ij->i", self._q_crystal, self._q_crystal)
        self._q_length = np.sqrt(self._q_squared)
        self.excitation = ExcitationModel()

    def excitation_errors(self, q: np.ndarray) -> np.ndarray:
        """Signed distance (1/Å) of each lab-frame reciprocal-lattice point from the Ewald sphere."""
        inverse_wavelength = 1.0 / self.detector.wavelength_a
        k = q.copy()
        k[:, 2] += inverse_wavelength
        return inverse_wavelength - np.linalg.norm(k, axis=1)

    def learn(self, hkl: np.ndarray, orientation: np.ndarray) -> None:
        """Add the indexed spots of one frame to the excitation model."""
        q = np.asarray(hkl, dtype=np.float64) @ (orientation @ self.b_matrix).T
        self.excitation.update(np.linalg.norm(q, axis=1), self.excitation_errors(q))

    def cutoff(self, q_length: np.ndarray) -> np.ndarray:
        s = self.settings
        if s.excitation_cutoff is not None:
            return np.full(len(q_length), s.excitation_cutoff)
        if self.excitation.observations < 3:
            return np.full(len(q_length), s.max_cutoff)
        return np.clip(s.cutoff_sigmas * self.excitation.rms(q_length), s.min_cutoff, s.max_cutoff)

    def near_sphere(self, orientation: np.ndarray) -> np.ndarray:
        """Indices of the reflections within the cutoff of the Ewald sphere for orientation U.

        |k0 + q|² = |q|² + 2·q_z/λ + 1/λ², so the excitation error needs only q_z = (U·B·hkl)_z of each reflection
        (one dot product, not the whole rotation), and the cutoff, which never exceeds its upper bound, is
        evaluated only for the few reflections within that bound."""
        s = self.settings
        inverse_wavelength = 1.0 / self.detector.wavelength_a
        q_z = self._q_crystal @ orientation[2]
        k_norm = np.sqrt(self._q_squared + 2.0 * inverse_wavelength * q_z + inverse_wavelength**2)
        excitation = np.abs(inverse_wavelength - k_norm)
        bound = s.excitation_cutoff if s.excitation_cutoff is not None else s.max_cutoff
        candidates = np.flatnonzero(excitation < bound)
        return candidates[excitation[candidates] < self.cutoff(self._q_length[candidates])]

    def integrate(self, modules: np.ndarray, orientation: np.ndarray) -> Reflections:
        """Integrate ``modules`` (M, rows, cols) at the reflections predicted for orientation U."""
        d = self.detector
        s = self.settings
        near = self.near_sphere(orientation)
        hkl, q = self.hkl[near], self._q_crystal[near] @ orientation.T
        a_slow, a_fast, forward = d.q_to_assembled(q)
        module, row, col, on_module = d.assembled_to_flat(a_slow, a_fast)
        rows, cols = d.module_shape
        reach = s.box_half + s.ring_px
        centre_row = np.rint(row).astype(np.int64)
        centre_col = np.rint(col).astype(np.int64)
        inside = (
            forward
            & on_module
            & (centre_row - reach >= 0)
            & (centre_row + reach < rows)
            & (centre_col - reach >= 0)
            & (centre_col + reach < cols)
        )
        hkl, module, centre_row, centre_col = hkl[inside], module[inside], centre_row[inside], centre_col[inside]
        row, col = row[inside], col[inside]
        offsets = np.arange(-reach, reach + 1)
        windows = modules.reshape(d.n_modules, rows, cols)[
            module[:, None, None],
            centre_row[:, None, None] + offsets[None, :, None],
            centre_col[:, None, None] + offsets[None, None, :],
        ].astype(np.float64)
        in_box = (np.abs(offsets)[:, None] <= s.box_half) & (np.abs(offsets)[None, :] <= s.box_half)
        box = windows[:, in_box]
        ring = windows[:, ~in_box]
        median = np.median(ring, axis=1, keepdims=True)
        usable = ring <= median + 4.0 * np.sqrt(np.maximum(median, 0.0) + 1.0)
        n_ring = np.maximum(usable.sum(axis=1), 1)
        background = (ring * usable).sum(axis=1) / n_ring
        n_box = box.shape[1]
        intensity = box.sum(axis=1) - n_box * background
        variance = np.maximum(box.sum(axis=1), 0.0) + n_box**2 * np.maximum(background, 0.0) / n_ring
        return Reflections(
            hkl=hkl.astype(np.int32),
            intensity=intensity,
            sigma=np.sqrt(np.maximum(variance, 1.0)),
            slow=module * rows + row,
            fast=col,
        )
