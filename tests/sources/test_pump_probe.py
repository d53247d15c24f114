"""``synthetic-diffraction`` pump-probe: ``model_changes`` make the laser-on (light) model; events follow a pattern."""

from __future__ import annotations

import importlib.util
import json
import re
from typing import Any

import numpy as np
import pytest

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import ConfigError
from photonstream.sources._atomic_model import (
    changed_atoms,
    changed_model,
    load_model,
    resolve_model,
    simulated_model,
    structure_factors,
)
from photonstream.sources._diffraction_options import SyntheticDiffractionOptions
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemmi") is None, reason="gemmi is not installed")

LYSOZYME = str(resolve_model("1aki"))
TRP62_SIDE_CHAIN = "//A/62/!N,CA,C,O"  # 10 atoms, CB to CH2
MOVE = {"move": TRP62_SIDE_CHAIN, "by": [1.5, 0.0, 0.0]}
DETECTOR = {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
            "module_gap_px": 6, "resolution_limit_a": 3.0}  # fmt: skip


def config_error(**options: Any) -> str:
    with pytest.raises(ConfigError) as info:
        validate_pipeline({"source": {"type": "synthetic-diffraction", **options}, "handlers": [{"type": "null"}]})
    return str(info.value)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"model": "1aki", "model_changes": [{"move": "//A/5x!/CA", "by": [1, 0, 0]}]},
         r"model_changes\[0\]\.move_atoms\.move: .*not a gemmi selection"),
        ({"model": "1aki", "model_changes": [MOVE] * 21}, r"model_changes: .*at most 20"),
        ({"model": "1aki", "model_changes": [{"move": "//A/62", "by": [8, 8, 0]}]},
         r"model_changes\[0\]\.move_atoms\.by: .*\|by\| = 11.3 Å; at most 10"),
        ({"model": "1aki", "model_changes": [{"occupancy": "//A/62", "to": 1.2}]},
         r"model_changes\[0\]\.set_occupancy\.to"),
        ({"model": "1aki", "model_changes": [{"add": [{"element": "O", "xyz": [0, 0, 0]}] * 51}]},
         r"model_changes\[0\]\.add_atoms\.add: .*at most 50"),
        ({"model": "1aki", "model_changes": [{"add": [{"element": "Qx", "xyz": [0, 0, 0]}]}]},
         r"model_changes\[0\]\.add_atoms\.add\[0\]\.element: .*not a chemical element"),
        ({"model": "1aki", "model_changes": [{"shift": TRP62_SIDE_CHAIN}]}, r"model_changes\[0\]: each change is"),
        ({"model": "1aki", "model_changes": [MOVE], "laser_pattern": "on,dark"}, r"laser_pattern: .*got 'dark'"),
        ({"model": "1aki", "model_changes": [MOVE], "laser_pattern": ",".join(["on"] * 65)},
         r"laser_pattern: .*at most 64"),
        ({"model_changes": [MOVE]}, r"model_changes: only with model"),
        ({"model": "1aki", "laser_pattern": "on,off"}, r"laser_pattern: only with model and model_changes"),
    ],
)  # fmt: skip
def test_bad_changes_and_patterns_are_refused_naming_the_field(options: dict, expected: str) -> None:
    message = config_error(**options)
    assert "\n" not in message
    assert re.search(expected, message), message


def test_a_selection_that_matches_no_atom_is_refused_naming_it() -> None:
    options = SyntheticDiffractionOptions(model="1aki", model_changes=[MOVE, {"move": "/1/A/50/CD1", "by": [1, 0, 0]}])
    with pytest.raises(ConfigError, match=r"model_changes\[1\]\.move: '/1/A/50/CD1' selects no atom"):
        SyntheticDiffraction(options)  # Ser50 has no CD1


@pytest.mark.parametrize("bulk_solvent", [False, True])
def test_occupancy_zero_is_the_same_as_deleting_the_atoms(bulk_solvent: bool) -> None:
    import gemmi

    zero = changed_model(LYSOZYME, 2.0, bulk_solvent, [{"occupancy": "//A/62", "to": 0.0}])
    structure = gemmi.read_structure(LYSOZYME)
    structure.setup_entities()
    structure.remove_hydrogens()
    gemmi.Selection("//A/62").remove_selected(structure)
    deleted = structure_factors(structure, LYSOZYME, 2.0, bulk_solvent)
    assert np.array_equal(zero.asu_hkl, deleted.asu_hkl)
    np.testing.assert_allclose(zero.asu_intensity, deleted.asu_intensity, rtol=1e-4,
                               atol=1e-4 * deleted.asu_intensity.max())  # fmt: skip
    base = load_model(LYSOZYME, 2.0, bulk_solvent)
    assert not np.allclose(base.asu_intensity, deleted.asu_intensity, rtol=1e-3)  # Trp62 does scatter


def test_moving_a_side_chain_changes_the_intensities_and_a_no_op_does_not() -> None:
    dark = load_model(LYSOZYME, 2.0, True)
    light = changed_model(LYSOZYME, 2.0, True, [MOVE])
    assert np.array_equal(light.asu_hkl, dark.asu_hkl)
    f_dark, f_light = np.sqrt(dark.asu_intensity), np.sqrt(light.asu_intensity)
    assert np.mean(np.abs(f_light - f_dark)) / np.mean(f_dark) > 0.005
    noop = changed_model(LYSOZYME, 2.0, True, [{"move": TRP62_SIDE_CHAIN, "by": [0, 0, 0]}])
    assert noop is not dark and np.array_equal(noop.asu_intensity, dark.asu_intensity)
    # cached on the changes themselves, whatever form they come in (options, dicts, the JSON a start message has)
    options = SyntheticDiffractionOptions(model="1aki", model_changes=[MOVE])
    assert changed_model(LYSOZYME, 2.0, True, options.model_changes) is light
    as_json = json.dumps([{"by": [1.5, 0, 0], "move": TRP62_SIDE_CHAIN}])
    assert changed_model(LYSOZYME, 2.0, True, as_json) is light


def test_changed_atoms_are_where_the_changes_put_them() -> None:
    changes = [MOVE, {"occupancy": "//A/62/CZ2", "to": 0.3},
               {"add": [{"element": "Fe", "xyz": [1.0, 2.0, 3.0], "b": 30.0}]}]  # fmt: skip
    atoms = changed_atoms(LYSOZYME, changes)
    assert len(atoms.after) == 11 and atoms.moved.sum() == 10
    np.testing.assert_allclose(atoms.after[atoms.moved] - atoms.before[atoms.moved], [[1.5, 0, 0]] * 10, atol=1e-9)
    assert np.isfinite(atoms.before[atoms.moved]).all()
    cz2 = [i for i, kinds in enumerate(atoms.kinds) if "occupancy" in kinds]
    assert len(cz2) == 1 and atoms.kinds[cz2[0]] == {"move", "occupancy"}
    assert atoms.occupancy_before[cz2[0]] == 1.0 and atoms.occupancy_after[cz2[0]] == pytest.approx(0.3)
    assert atoms.kinds[-1] == {"add"} and np.isnan(atoms.before[-1]).all()
    np.testing.assert_allclose(atoms.after[-1], [1.0, 2.0, 3.0])


def test_a_pump_probe_run_alternates_laser_and_light_events_diffract_from_the_light_model() -> None:
    changes = [{"occupancy": "//A/1-40", "to": 0.0}]  # a big change: every spot a test of which model it came from
    common = {**DETECTOR, "dtype": "uint32", "spot_photons": 1e5, "events": 20, "hit_fraction": 1.0, "seed": 4}
    pumped = SyntheticDiffraction(SyntheticDiffractionOptions(**common, model="1aki", model_changes=changes,
                                                              laser_pattern="on,off,off"))  # fmt: skip
    plain = SyntheticDiffraction(SyntheticDiffractionOptions(**common, model="1aki"))
    details = pumped.open().details
    assert details["laser_pattern"] == "on,off,off" and details["model_changes"] == [
        {"occupancy": "//A/1-40", "to": 0.0}
    ]
    assert "laser" not in plain.frame(0).metadata and plain.open().details["model_changes"] is None
    # the source's light intensities are the merger's rebuilt light model's, over the dark model's mean
    hkl, light = pumped.relative_intensities(laser=True)
    dark_model = simulated_model("1aki", 3.0, True)
    light_model = simulated_model("1aki", 3.0, True, details["model_changes"])
    np.testing.assert_allclose(light, light_model.intensities(hkl) / dark_model.intensities(hkl).mean(), rtol=1e-12)

    frames = list(pumped.events())
    assert [f.metadata["laser"] for f in frames] == [i % 3 == 0 for i in range(20)]
    assert all(type(f.metadata["laser"]) is bool for f in frames)
    ratio_of_models = dict(zip(map(tuple, hkl), light / pumped.relative_intensities()[1], strict=True))
    pulls_light, pulls_dark = [], []
    for frame in frames:
        reference = plain.frame(frame.event)  # the same crystal, orientation and partialities, dark
        if not frame.metadata["laser"]:
            np.testing.assert_array_equal(frame.arrays["data"], reference.arrays["data"])
            continue
        ours = {tuple(h): p for h, p in zip(frame.metadata["hkl"], frame.metadata["spots"][:, 2], strict=True)}
        for h, p_dark in zip(reference.metadata["hkl"], reference.metadata["spots"][:, 2], strict=True):
            p_light = ours.get(tuple(h), 0.0)
            if p_dark < 2000:
                continue
            expected = ratio_of_models[tuple(h)]
            sigma = np.sqrt(p_light / p_dark**2 + p_light**2 / p_dark**3) + 1e-3
            pulls_light.append((p_light / p_dark - expected) / sigma)
            pulls_dark.append((p_light / p_dark - 1.0) / sigma)
    assert len(pulls_light) > 100
    assert np.mean(np.square(pulls_light)) < 2.0, np.mean(np.square(pulls_light))  # Poisson scatter only
    assert np.mean(np.square(pulls_dark)) > 50.0  # and not the dark model's intensities
