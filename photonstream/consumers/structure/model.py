"""The atomic model the structure stage refines: read with iotbx.pdb, with what the maps and peak list need.

``load_structure_model("1aki")`` (a bundled name, see ``photonstream.sources._atomic_model.BUNDLED``) or a PDB/mmCIF
path. Hydrogens are dropped (X-ray data at these resolutions do not see them). ``nearest_residue`` finds the atom
closest to a point over every symmetry copy and lattice translation, so a peak anywhere in the cell names the
residue it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photonstream.consumers.xtal._cctbx import require_cctbx
from photonstream.errors import ConfigError
from photonstream.sources._atomic_model import resolve_model

MAX_MODEL_ATOMS = 200_000


@dataclass(frozen=True, eq=False)
class StructureModel:
    path: str
    hierarchy: Any  # iotbx.pdb hierarchy (hydrogens removed)
    symmetry: Any  # cctbx crystal.symmetry
    labels: list[str]  # "A/ARG 45/CD" per atom, in i_seq order
    residue_of: np.ndarray  # (N,) index into ``residues``
    residues: list[str]  # "A/ARG 45"
    residue_atoms: list[np.ndarray]  # the atoms (i_seq) of each residue: the grouped-B groups

    def xray_structure(self) -> Any:
        return self.hierarchy.extract_xray_structure(crystal_symmetry=self.symmetry)

    @property
    def sites_cart(self) -> np.ndarray:
        return np.array(self.hierarchy.atoms().extract_xyz(), dtype=np.float64).reshape(-1, 3)

    def distances(self, site_frac: tuple[float, float, float], sites_cart: np.ndarray) -> np.ndarray:
        """Distance (Å) from ``site_frac`` to each of ``sites_cart``, the shortest over all symmetry copies and
        lattice translations."""
        cell = self.symmetry.unit_cell()
        orthogonal = np.array(cell.orthogonalization_matrix(), dtype=np.float64).reshape(3, 3)
        frac = np.asarray(sites_cart, dtype=np.float64).reshape(-1, 3) @ np.linalg.inv(orthogonal).T
        shortest = np.full(len(frac), np.inf)
        for op in self.symmetry.space_group().all_ops():
            rotation = np.array(op.r().as_double(), dtype=np.float64).reshape(3, 3)
            translation = np.array(op.t().as_double(), dtype=np.float64)
            delta = np.asarray(site_frac, dtype=np.float64) - (frac @ rotation.T + translation)
            delta -= np.round(delta)
            shortest = np.minimum(shortest, np.linalg.norm(delta @ orthogonal.T, axis=1))
        return shortest

    def nearest_residue(self, site_frac: tuple[float, float, float]) -> tuple[str, str, float]:
        """(residue, atom label, distance Å) of the model atom nearest ``site_frac`` over all symmetry copies."""
        distance = self.distances(site_frac, self.sites_cart)
        atom = int(np.argmin(distance))
        return self.residues[int(self.residue_of[atom])], self.labels[atom], float(distance[atom])


def _read(path: Path) -> tuple[Any, Any]:
    require_cctbx("the structure stage")
    import iotbx.pdb

    try:
        pdb_input = iotbx.pdb.input(file_name=str(path))
    except Exception as exc:  # iotbx raises Sorry and RuntimeError subclasses for unreadable files
        raise ConfigError(f"model: {path}: not a readable PDB or mmCIF file ({exc})") from None
    symmetry = pdb_input.crystal_symmetry()
    if symmetry is None or symmetry.unit_cell() is None or symmetry.space_group_info() is None:
        raise ConfigError(f"model: {path}: no unit cell and space group (CRYST1 or _cell/_symmetry)")
    return pdb_input.construct_hierarchy(), symmetry


def load_structure_model(name: str) -> StructureModel:
    """The model ``name`` (bundled or a file); ConfigError naming what is wrong with it."""
    path = resolve_model(name)
    hierarchy, symmetry = _read(path)
    cache = hierarchy.atom_selection_cache()
    hierarchy = hierarchy.select(cache.selection("not (element H or element D)"))
    hierarchy.atoms().reset_i_seq()
    atoms = hierarchy.atoms()
    if atoms.size() == 0:
        raise ConfigError(f"model: {path}: no atoms")
    if atoms.size() > MAX_MODEL_ATOMS:
        raise ConfigError(f"model: {path}: {atoms.size()} atoms, more than the limit of {MAX_MODEL_ATOMS}")
    residues: list[str] = []
    residue_atoms: list[np.ndarray] = []
    residue_of = np.zeros(atoms.size(), dtype=np.int64)
    labels = [""] * atoms.size()
    for chain in hierarchy.chains():
        for group in chain.residue_groups():
            name_here = f"{chain.id.strip() or '_'}/{group.unique_resnames()[0].strip()} {group.resseq.strip()}"
            seqs = np.array(group.atoms().extract_i_seq(), dtype=np.int64)
            for atom in group.atoms():
                labels[atom.i_seq] = f"{name_here}/{atom.name.strip()}"
            residue_of[seqs] = len(residues)
            residues.append(name_here)
            residue_atoms.append(seqs)
    return StructureModel(str(path), hierarchy, symmetry, labels, residue_of, residues, residue_atoms)


def write_model(model: StructureModel, path: Path, selection: str | None = None, shift: tuple[float, ...] = ()) -> None:
    """``model`` (or the atoms an iotbx ``selection`` keeps, moved by ``shift`` Å) as a PDB file: for omit maps
    and control refinements."""
    hierarchy = model.hierarchy.deep_copy()
    if selection is not None:
        hierarchy = hierarchy.select(hierarchy.atom_selection_cache().selection(selection))
    if shift:
        atoms = hierarchy.atoms()
        atoms.set_xyz(atoms.extract_xyz() + tuple(float(v) for v in shift))
    path.write_text(hierarchy.as_pdb_string(crystal_symmetry=model.symmetry))
