"""The structure stage against the real 1AKI model: a whole run (buffer, two workers, merger, structure stage
processes) on stills simulated from the full model, then R-free for the right and a wrong model, an omit map, and
a pump-probe light−dark map. cctbx (mmtbx) does the crystallography, in fresh interpreters (see
_structure_checks.py); this process checks what they report."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photonstream.consumers.structure.refine import free_flags
from photonstream.consumers.structure.worker import check_snapshot
from photonstream.errors import PhotonstreamError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mmtbx") is None or importlib.util.find_spec("gemmi") is None,
    reason="cctbx-base (mmtbx) and gemmi are needed",
)

REPO = Path(__file__).resolve().parents[2]
CHECKS = Path(__file__).with_name("_structure_checks.py")
SEED = 7


def _checks(kind: str, folder: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, str(CHECKS), kind, str(folder), str(SEED)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _checks("plain", tmp_path_factory.mktemp("structure-plain"))


@pytest.fixture(scope="module")
def pump_probe(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _checks("pump-probe", tmp_path_factory.mktemp("structure-pump-probe"))


def test_free_flags_are_five_percent_and_the_same_in_every_update() -> None:
    rng = np.random.default_rng(1)
    hkl = rng.integers(-40, 41, size=(40_000, 3))
    flags = free_flags(hkl)
    assert 0.045 < flags.mean() < 0.055
    subset = rng.choice(len(hkl), 5000, replace=False)  # an early update has fewer reflections: same flags
    assert np.array_equal(free_flags(hkl[subset]), flags[subset])
    assert not np.array_equal(free_flags(hkl + np.array([1, 0, 0])), flags)  # a hash of the index, not of the position


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ([1, 2], "not a merged-data snapshot"),
        ({"type": "merged", "groups": {}}, "1 to 4 groups"),
        ({"type": "merged", "groups": {f"g{i}": {} for i in range(5)}}, "1 to 4 groups"),
        ({"type": "merged", "groups": {"all": {"hkl": []}}}, "needs hkl, I and sigma"),
        ({"type": "merged", "groups": {"all": {"hkl": [], "I": [], "sigma": []}}, "unit_cell": [1]}, "unit_cell"),
    ],
)
def test_a_snapshot_that_is_not_one_is_refused_with_its_reason(record: Any, reason: str) -> None:
    with pytest.raises(PhotonstreamError, match=reason):
        check_snapshot(record)


@pytest.mark.slow
def test_the_correct_model_refines_to_a_low_r_free_and_a_wrong_one_does_not(plain: dict[str, Any]) -> None:
    final = plain["summary"]
    assert final["final"] and final["model"] == "1aki" and final["data"] == "all"
    assert final["r_free"] < 0.30, final
    assert final["r_free"] - final["r_work"] < 0.08, final
    assert 0.04 < final["free_reflections"] / final["reflections"] < 0.06
    assert "grouped B (one per residue)" in final["steps"]
    # The first update places the model (rigid body); later ones refine B against more data.
    assert "rigid body" in plain["structure"][0]["steps"], plain["structure"][0]
    assert plain["wrong"]["r_free"] > 0.45, plain["wrong"]  # the model moved by (a/4, b/4, 0)
    assert plain["structure"][-1]["final"] and plain["structure"][-1]["r_free"] == final["r_free"]


@pytest.mark.slow
def test_the_stage_writes_mtz_and_ccp4_files_that_cctbx_reads(plain: dict[str, Any]) -> None:
    assert {"structure.mtz", "2mFo-DFc.ccp4", "mFo-DFc.ccp4", "structure.json"} <= set(plain["files"])
    assert {"FP", "SIGFP", "FreeR_flag", "FWT", "PHWT", "DELFWT", "PHDELWT"} <= set(plain["mtz_labels"])
    assert plain["map_cell"] == pytest.approx([59.062, 68.451, 30.517, 90, 90, 90], abs=0.01)
    assert plain["section_size"] == 33 and plain["summary"]["peaks"]


@pytest.mark.slow
def test_an_omit_map_shows_the_omitted_residues_and_nothing_else_as_high(plain: dict[str, Any]) -> None:
    omit = plain["omit"]
    assert omit["atoms"] >= 30, omit  # six residues
    assert omit["fraction_above_3"] >= 0.8, omit
    assert omit["highest_near"] >= 3.0 and omit["highest_near"] > omit["highest_elsewhere"], omit


@pytest.mark.slow
def test_a_moved_side_chain_gives_the_strongest_light_dark_peaks_on_it(pump_probe: dict[str, Any]) -> None:
    assert pump_probe["pump_probe"] and "light-dark.ccp4" in pump_probe["files"]
    assert pump_probe["structure"][-1]["final"]
    strongest = pump_probe["peaks"][:2]
    assert {peak["sign"] for peak in strongest} == {"+", "-"}, strongest
    for peak in strongest:
        assert min(peak["to_after"], peak["to_before"]) <= 2.0, peak
        if peak["sign"] == "+":  # density appears where the atoms went
            assert peak["to_after"] < peak["to_before"], peak
        else:  # and goes from where they were
            assert peak["to_before"] < peak["to_after"], peak


def test_the_stage_in_a_process_that_loaded_scipy_first_says_why_it_cannot_run() -> None:
    code = """
import scipy.special
import numpy as np
from photonstream.consumers.structure.refine import MergedData, refine
from photonstream.consumers.structure.model import load_structure_model
try:
    load_structure_model("1aki")
except ImportError as exc:
    print(type(exc).__name__, exc)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("ImportOrderError"), done.stdout
    assert "scipy.special" in done.stdout and "python -m photonstream.consumers.xtal" in done.stdout


def test_many_maps_in_one_process_all_get_written(tmp_path: Path) -> None:
    """cctbx's as_ccp4_map grows its default labels list on every call and asserts at ten: a long run's stage
    writes far more maps than that."""
    from cctbx import crystal, miller
    from cctbx.array_family import flex

    from photonstream.consumers.structure.maps import write_ccp4

    symmetry = crystal.symmetry(unit_cell=(59.06, 68.45, 30.52, 90, 90, 90), space_group_symbol="P212121")
    indices = miller.build_set(symmetry, anomalous_flag=False, d_min=4.0)
    rng = np.random.default_rng(1)
    data = flex.complex_double([complex(a, b) for a, b in rng.normal(size=(indices.size(), 2))])
    fft = indices.array(data=data).fft_map(resolution_factor=0.33)
    for number in range(12):
        write_ccp4(tmp_path / f"map-{number}.ccp4", fft)
    assert all((tmp_path / f"map-{number}.ccp4").stat().st_size > 10_000 for number in range(12))
