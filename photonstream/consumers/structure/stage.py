"""The structure stage: each merged snapshot of a run → refinement, maps, peaks, files and a summary.

    stage = StructureStage("1aki", Path("out"))
    summary = stage.update(snapshot)          # what the merger sends: ``xtal.to_structure.snapshot_record``

A snapshot holds merged intensities per group: ``all`` for a plain run, ``on`` and ``off`` for a pump-probe run.
A plain run is refined against ``all`` and its peaks are those of the mFo−DFc map; a pump-probe run is refined
against the dark (``off``) data, and its peaks are those of the light−dark isomorphous difference map. Rigid-body
refinement runs in the first update only (later data do not move a placed model). Files are replaced atomically
in ``out``: ``structure.mtz`` (amplitudes, free set, FWT/PHWT, DELFWT/PHDELWT[, FDIFF/PHDIFF]), ``2mFo-DFc.ccp4``,
``mFo-DFc.ccp4`` [, ``light-dark.ccp4``] and ``structure.json`` (the summary with its history).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photonstream.client.results import STRUCTURE_FILES
from photonstream.consumers.structure import maps
from photonstream.consumers.structure.model import StructureModel, load_structure_model
from photonstream.consumers.structure.refine import MergedData, RefineSettings, observed_amplitudes, refine
from photonstream.errors import ConfigError

MAX_HISTORY = 500


def _merged(snapshot: dict[str, Any], label: str) -> MergedData:
    group = snapshot["groups"][label]
    return MergedData(np.asarray(group["hkl"]).reshape(-1, 3), np.asarray(group["I"], np.float64),
                      np.asarray(group["sigma"], np.float64), tuple(snapshot["unit_cell"]),
                      str(snapshot["space_group"]))  # fmt: skip


@dataclass
class StructureStage:
    model_name: str
    out_dir: Path
    budget_s: float = 20.0
    peak_count: int = 20

    def __post_init__(self) -> None:
        self.model: StructureModel = load_structure_model(self.model_name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.updates = 0
        self.history: list[dict[str, Any]] = []
        self._began = time.monotonic()

    def update(self, snapshot: dict[str, Any]) -> dict[str, Any]:
        """One update from one snapshot; the summary (also written to structure.json)."""
        clock = time.perf_counter()
        groups = snapshot.get("groups") or {}
        pump_probe = "on" in groups and "off" in groups
        label = "off" if pump_probe else ("all" if "all" in groups else next(iter(groups), None))
        if label is None:
            raise ConfigError("structure: the snapshot has no merged reflections")
        settings = RefineSettings(budget_s=self.budget_s, rigid_body=self.updates == 0)
        refinement = refine(_merged(snapshot, label), self.model, settings)
        coefficients = maps.map_coefficients(refinement)
        scale_light = None
        if pump_probe:
            light = observed_amplitudes(_merged(snapshot, "on"), self.model.symmetry)
            coefficients["light-dark"], scale_light = maps.difference_coefficients(light, refinement)
        peak_map = "light-dark" if pump_probe else "mFo-DFc"
        peaks = maps.peaks(coefficients[peak_map], self.model, self.peak_count)
        fft = {name: maps.sigma_map(array) for name, array in coefficients.items()}
        self._write(refinement, coefficients, fft, float(snapshot.get("wavelength_a", 1.0)))
        centre = peaks[0].xyz if peaks else tuple(self.model.sites_cart.mean(axis=0))
        self.updates += 1
        point = {
            "update": self.updates,
            "at_s": round(time.monotonic() - self._began, 3),
            "frames": int(snapshot.get("frames", 0)),
            "indexed": int(snapshot.get("indexed", 0)),
            "r_work": round(refinement.r_work, 4),
            "r_free": round(refinement.r_free, 4),
            "seconds": round(time.perf_counter() - clock, 3),
        }
        self.history = [*self.history, point][-MAX_HISTORY:]
        summary = {
            **point,
            "final": bool(snapshot.get("final")),
            "model": self.model_name,
            "data": label,
            "pump_probe": pump_probe,
            "r_work_start": round(refinement.r_work_start, 4),
            "r_free_start": round(refinement.r_free_start, 4),
            "reflections": refinement.reflections,
            "free_reflections": refinement.free_reflections,
            "d_min": round(refinement.d_min, 3),
            "k_sol": _rounded(refinement.k_sol, 3),
            "b_sol": _rounded(refinement.b_sol, 1),
            "steps": refinement.steps,
            "step_seconds": refinement.seconds,
            "light_dark_scale": None if scale_light is None else round(scale_light, 4),
            "peak_map": peak_map,
            "peaks": [peak.as_dict() for peak in peaks],
            "section": {
                "map": peak_map,
                **maps.section(fft[peak_map], centre),
                "density": maps.section(fft["2mFo-DFc"], centre)["values"],
            },
            "files": [name for name in STRUCTURE_FILES if (self.out_dir / name).exists() and name != "structure.json"],
            "history": self.history,
        }
        _replace(self.out_dir / "structure.json", json.dumps(summary).encode())
        return summary

    def _write(self, refinement: Any, coefficients: dict[str, Any], fft: dict[str, Any], wavelength_a: float) -> None:
        partial = self.out_dir / ".structure.mtz.partial"
        maps.write_mtz(partial, refinement, coefficients, wavelength_a)
        os.replace(partial, self.out_dir / "structure.mtz")
        for name, grid in fft.items():
            partial = self.out_dir / f".{name}.ccp4.partial"
            maps.write_ccp4(partial, grid)
            os.replace(partial, self.out_dir / f"{name}.ccp4")


def _rounded(value: float, digits: int) -> float | None:
    return None if not np.isfinite(value) else round(float(value), digits)


def _replace(path: Path, payload: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(payload)
    os.replace(partial, path)
