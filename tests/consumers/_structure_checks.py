"""Runs in a fresh interpreter (cctbx must be imported before scipy, which the test process has loaded): a whole
crystallography run with the structure stage, then the checks the structure tests assert on, printed as JSON.

    python tests/consumers/_structure_checks.py plain OUT_DIR SEED
    python tests/consumers/_structure_checks.py pump-probe OUT_DIR SEED
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import photonstream.consumers.xtal  # noqa: F401  (cctbx first)
from photonstream.consumers.structure import maps
from photonstream.consumers.structure.model import load_structure_model, write_model
from photonstream.consumers.structure.refine import MergedData, refine
from photonstream.consumers.xtal._cctbx import read_mtz
from photonstream.consumers.xtal.local import run_local
from photonstream.sources._atomic_model import BUNDLED, changed_atoms

DETECTOR = {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
            "module_gap_px": 6, "resolution_limit_a": 2.5, "spot_photons": 300.0}  # fmt: skip
TRP62_SIDE_CHAIN = "//A/62/CD1,CD2,NE1,CE2,CE3,CZ2,CZ3,CH2"
SHIFT = np.array([0.25, 0.25, 0.0])  # fractions of a and b: not an origin shift P212121 allows


def _run(folder: Path, events: int, seed: int, extra: dict[str, Any]) -> Any:
    source = {"type": "synthetic-diffraction", **DETECTOR, "events": events, "hit_fraction": 0.8, "seed": seed,
              "model": "1aki", **extra}  # fmt: skip
    return run_local(source, 2, folder, {}, report_every=50, structure="1aki", structure_every_s=2.0)


def _near_max(fft: Any, sites: np.ndarray, radius: float = 1.0, step: float = 0.25) -> np.ndarray:
    """The highest map value within ``radius`` Å of each site (sampled on a ``step`` Å lattice)."""
    axis = np.arange(-radius, radius + 1e-9, step)
    offsets = np.array([(x, y, z) for x in axis for y in axis for z in axis if x * x + y * y + z * z <= radius**2])
    values = maps.map_values_at(fft, (sites[:, None, :] + offsets[None, :, :]).reshape(-1, 3))
    return values.reshape(len(sites), len(offsets)).max(axis=1)


def plain(folder: Path, seed: int) -> dict[str, Any]:
    run = _run(folder, 300, seed, {})
    merged = read_mtz(str(run.mtz))
    data = MergedData(merged["hkl"], merged["intensity"], merged["sigma"], tuple(merged["unit_cell"]),
                      merged["space_group"].replace(" ", ""))  # fmt: skip
    full = load_structure_model("1aki")
    cell = np.array(full.symmetry.unit_cell().parameters()[:3])
    write_model(full, folder / "shifted.pdb", None, tuple(SHIFT * cell))
    wrong = refine(data, load_structure_model(str(folder / "shifted.pdb")))
    first = int(np.random.default_rng(seed).integers(2, 124))  # six residues, first..first+5
    omitted = f"resseq {first}:{first + 5}"
    write_model(full, folder / "omit.pdb", f"not ({omitted})")
    omit_model = load_structure_model(str(folder / "omit.pdb"))
    omit = refine(data, omit_model)
    coefficients = maps.map_coefficients(omit)
    fft = maps.sigma_map(coefficients["mFo-DFc"])
    selection = np.array(full.hierarchy.atom_selection_cache().selection(omitted))
    omitted_sites = full.sites_cart[selection]
    peaks = maps.peaks(coefficients["mFo-DFc"], omit_model, count=40, cutoff_sigma=2.5)
    near = [p for p in peaks if full.distances(p.site_frac, omitted_sites).min() <= 2.0]
    far = [p for p in peaks if full.distances(p.site_frac, omitted_sites).min() > 2.0]
    summary = json.loads((folder / "structure" / "structure.json").read_text())
    return {
        "structure": run.structure,
        "summary": {k: v for k, v in summary.items() if k != "section"},
        "section_size": summary["section"]["size"],
        "merging": run.document["report"]["merging"]["resolution"],
        "wrong": {"r_work": wrong.r_work, "r_free": wrong.r_free},
        "omit": {
            "residues": omitted,
            "atoms": int(selection.sum()),
            "r_free": omit.r_free,
            "fraction_above_3": float(np.mean(_near_max(fft, omitted_sites) >= 3.0)),
            "highest_near": max((p.height_sigma for p in near if p.sign > 0), default=0.0),
            "highest_elsewhere": max((p.height_sigma for p in far), default=0.0),
            "elsewhere": [p.as_dict() for p in far[:3]],
        },
        "files": sorted(p.name for p in (folder / "structure").iterdir()),
        "mtz_labels": read_mtz_labels(folder / "structure" / "structure.mtz"),
        "map_cell": read_map_cell(folder / "structure" / "2mFo-DFc.ccp4"),
    }


def read_mtz_labels(path: Path) -> list[str]:
    import iotbx.mtz

    return [column.label() for column in iotbx.mtz.object(str(path)).columns()]


def read_map_cell(path: Path) -> list[float]:
    import iotbx.ccp4_map

    return [round(v, 3) for v in iotbx.ccp4_map.map_reader(file_name=str(path)).unit_cell().parameters()]


def pump_probe(folder: Path, seed: int) -> dict[str, Any]:
    changes = [{"move": TRP62_SIDE_CHAIN, "by": [1.5, 0.0, 0.0]}]
    run = _run(folder, 600, seed, {"model_changes": changes, "laser_pattern": "on,off"})
    summary = json.loads((folder / "structure" / "structure.json").read_text())
    atoms = changed_atoms(str(BUNDLED["1aki"]), changes)
    model = load_structure_model("1aki")
    checked = []
    for peak in summary["peaks"][:4]:
        site = model.symmetry.unit_cell().fractionalize(tuple(peak["xyz"]))
        checked.append({**peak, "to_after": float(model.distances(site, atoms.after[atoms.moved]).min()),
                        "to_before": float(model.distances(site, atoms.before[atoms.moved]).min())})  # fmt: skip
    return {"structure": run.structure, "pump_probe": summary["pump_probe"], "r_free": summary["r_free"],
            "peaks": checked, "files": sorted(p.name for p in (folder / "structure").iterdir())}  # fmt: skip


if __name__ == "__main__":
    kind, out, seed_text = sys.argv[1:4]
    checks = plain if kind == "plain" else pump_probe
    print(json.dumps(checks(Path(out), int(seed_text))))
