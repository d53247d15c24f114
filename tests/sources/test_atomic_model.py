"""``synthetic-diffraction`` with ``model``: structure factors of a real model (the bundled 1AKI lysozyme)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from photonstream.errors import ConfigError
from photonstream.sources._atomic_model import BUNDLED, load_model, resolve_model
from photonstream.sources._crystal import UnitCell
from photonstream.sources._diffraction_options import SyntheticDiffractionOptions
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gemmi") is None, reason="gemmi is not installed")

REPO = Path(__file__).resolve().parents[2]
SHARED_1AKI = REPO.parent / "shared" / "data" / "1AKI.pdb"
DETECTOR = {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
            "module_gap_px": 6, "resolution_limit_a": 3.0, "spot_photons": 300.0}  # fmt: skip


def test_the_bundled_model_is_1aki_with_its_cell_space_group_and_atoms() -> None:
    model = load_model(str(resolve_model("1aki")), 2.0, False)
    assert model.cell == pytest.approx((59.062, 68.451, 30.517, 90, 90, 90))
    assert model.space_group == "P212121" and model.atoms == 1001
    if SHARED_1AKI.exists():  # the copy in the package is the project's reference file
        assert BUNDLED["1aki"].read_bytes() == SHARED_1AKI.read_bytes()


def test_fft_structure_factors_equal_the_direct_sum_over_atoms() -> None:
    import gemmi

    model = load_model(str(resolve_model("1aki")), 2.0, False)
    structure = gemmi.read_structure(str(BUNDLED["1aki"]))
    structure.setup_entities()
    direct = gemmi.StructureFactorCalculatorX(structure.cell)
    picked = model.asu_hkl[:: max(1, len(model.asu_hkl) // 150)]
    summed = np.array([abs(direct.calculate_sf_from_model(structure[0], [int(v) for v in hkl])) ** 2
                       for hkl in picked])  # fmt: skip
    np.testing.assert_allclose(model.intensities(picked), summed, rtol=1e-3, atol=1e-4 * summed.max())


def test_equivalent_reflections_share_an_intensity_and_absences_are_zero() -> None:
    model = load_model(str(resolve_model("1aki")), 2.0, False)
    h, k, l = (int(v) for v in model.asu_hkl[100])  # noqa: E741
    equivalents = [(h, k, l), (-h, -k, -l), (-h, k, -l), (h, -k, -l), (-h, -k, l)]
    values = model.intensities(np.array(equivalents))
    assert values[0] > 0 and np.allclose(values, values[0])
    absent = model.intensities(np.array([[0, 0, 1], [0, 3, 0], [5, 0, 0], [0, 0, 40]]))  # 00l odd; beyond d_min
    assert absent.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert model.intensities(np.array([[0, 0, 2]]))[0] > 0


def test_bulk_solvent_flattens_low_resolution_and_leaves_high_resolution() -> None:
    dry = load_model(str(resolve_model("1aki")), 2.0, False)
    wet = load_model(str(resolve_model("1aki")), 2.0, True)
    d = 1 / UnitCell(*dry.cell).resolution(dry.asu_hkl)
    low, high = d > 15, d < 3
    assert wet.asu_intensity[low].sum() < 0.2 * dry.asu_intensity[low].sum()  # protein against solvent contrast
    assert wet.asu_intensity[high].sum() == pytest.approx(dry.asu_intensity[high].sum(), rel=0.05)


def test_the_source_takes_cell_and_space_group_from_the_model() -> None:
    source = SyntheticDiffraction(SyntheticDiffractionOptions(**DETECTOR, events=5, hit_fraction=1.0, model="1aki"))
    details = source.open().details
    assert details["unit_cell"] == pytest.approx([59.062, 68.451, 30.517, 90, 90, 90])
    assert details["space_group"] == "P212121" and details["model"] == "1aki" and details["atoms"] == 1001
    frame = source.frame(0)
    assert len(frame.metadata["hkl"]) > 10  # a hit: spots of the model's reflections


def test_model_options_refuse_clashes_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="unit_cell: the model file sets these"):
        SyntheticDiffractionOptions(model="1aki", unit_cell=(50, 50, 50, 90, 90, 90))
    missing = SyntheticDiffractionOptions(model=str(tmp_path / "nope.pdb"))
    with pytest.raises(ConfigError, match="neither a bundled model"):
        SyntheticDiffraction(missing)
    junk = tmp_path / "junk.pdb"
    junk.write_text("not a model\n")
    with pytest.raises(ConfigError, match=r"model: .*junk\.pdb"):
        SyntheticDiffraction(SyntheticDiffractionOptions(model=str(junk)))


def test_crystals_differ_in_scale_and_b_when_asked() -> None:
    alike = SyntheticDiffraction(SyntheticDiffractionOptions(**DETECTOR, events=4, hit_fraction=1.0, model="1aki"))
    spread = {"crystal_scale_spread": 0.5, "crystal_b_spread": 10.0}
    varied = SyntheticDiffraction(SyntheticDiffractionOptions(**DETECTOR, events=4, hit_fraction=1.0, model="1aki",
                                                              **spread))  # fmt: skip
    alike.open(), varied.open()
    ratios = []
    for event in range(4):
        same, other = alike.frame(event), varied.frame(event)
        assert np.array_equal(same.metadata["orientation"], other.metadata["orientation"])
        ratios.append(other.metadata["spots"][:, 2].sum() / max(same.metadata["spots"][:, 2].sum(), 1))
    assert max(ratios) / min(ratios) > 1.3, ratios  # per-crystal scales, not one for all


@pytest.mark.slow
def test_a_distributed_run_on_1aki_indexes_and_merges_against_the_model(tmp_path: Path) -> None:
    code = f"""
import json, sys
from pathlib import Path
import photonstream.consumers.xtal
from photonstream.consumers.xtal.local import run_local
source = {{"type": "synthetic-diffraction", **{DETECTOR!r}, "events": 200, "hit_fraction": 0.8, "seed": 3,
          "model": "1aki"}}
run = run_local(source, 2, Path(sys.argv[1]), {{}}, report_every=50)
print(json.dumps(run.document["report"]))
"""
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["indexing_rate"] >= 0.8, report
    np.testing.assert_allclose(report["cell"]["mean"], [59.062, 68.451, 30.517, 90, 90, 90], rtol=0.003)
    assert report["cc_reference"] >= 0.85, report  # against the model's own |F|²
    merging = report["merging"]
    # simulated to 3.0 Å; the estimate is a shell's edge, and the shell around 3.0 Å is ~0.2 Å wide here
    assert 2.7 <= merging["resolution"]["cc_half"] <= 3.1, merging["resolution"]
    assert merging["overall"]["cc_half"] > 0.7
