"""Crystallography consumers: geometry, spot finding, known-cell indexing, integration and merging on synthetic
stills with ground truth (in this process, numpy only), then a distributed run: a pipeline into the buffer, two
worker processes sharing the frames as one consumer group, and a merger process writing MTZ (cctbx, pyFAI)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photonstream.consumers.xtal._wire import pack, unpack
from photonstream.consumers.xtal.indexing import KnownCellIndexer
from photonstream.consumers.xtal.integrate import IntegrationSettings, Integrator
from photonstream.consumers.xtal.local import LocalRun, run_local
from photonstream.consumers.xtal.merge import Merger, reference_from_source
from photonstream.consumers.xtal.scaling import FrameScaler
from photonstream.consumers.xtal.spots import find_spots
from photonstream.consumers.xtal.worker import XtalOptions, run_xtal_worker
from photonstream.detector import DetectorModel
from photonstream.errors import ConfigError
from photonstream.frames import StartMessage
from photonstream.sources._crystal import UnitCell, space_group_operators, symmetry_unique
from photonstream.sources.synthetic_diffraction import (
    SyntheticDiffraction,
    SyntheticDiffractionOptions,
    structure_model_for,
)

REPO = Path(__file__).resolve().parents[2]

# Four 192×192 modules (200 µm) in a 2×2 grid with gaps, beam in the middle: spots out to ~3 Å, ~8 px apart.
DETECTOR = {
    "detector": "custom",
    "shape": [4, 192, 192],
    "pixel_size_m": 200e-6,
    "module_grid": [2, 2],
    "module_gap_px": 6,
    "resolution_limit_a": 3.0,
    "spot_photons": 300.0,
}
RUN_EVENTS = 300
RUN_SEED = 11
WORKER_OPTIONS = {"powder_bins": 120}
STREAM = "sim/1/xtal"


def needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


@pytest.fixture(scope="module")
def source() -> SyntheticDiffraction:
    src = SyntheticDiffraction(SyntheticDiffractionOptions(**DETECTOR, events=40, hit_fraction=1.0, seed=5))
    src.open()
    return src


@pytest.fixture(scope="module")
def detector(source: SyntheticDiffraction) -> DetectorModel:
    info = source.open()
    return DetectorModel.from_start(StartMessage(stream_id="t", geometry=info.geometry, source=info.details))


def hkl_box(h: int, k: int, l_max: int, negative: bool = False) -> np.ndarray:
    """All (h, k, l) with |h| ≤ h, |k| ≤ k, |l| ≤ l_max (non-negative ones only unless ``negative``)."""
    low = (-h, -k, -l_max) if negative else (0, 0, 0)
    grid = np.mgrid[low[0] : h + 1, low[1] : k + 1, low[2] : l_max + 1]
    return grid.reshape(3, -1).T


def laue_rotations(space_group: str) -> np.ndarray:
    return np.array([rotation for rotation, _ in space_group_operators(space_group)])


def misorientation_deg(found: np.ndarray, true: np.ndarray, b_matrix: np.ndarray, rotations: np.ndarray) -> float:
    """Smallest angle between two orientations, over the indexing choices the Laue group allows."""
    best = 180.0
    for rotation in rotations:
        for sign in (1, -1):
            alternative = true @ b_matrix @ (sign * rotation).T @ np.linalg.inv(b_matrix)
            relative = found @ alternative.T
            angle = np.degrees(np.arccos(np.clip((np.trace(relative) - 1) / 2, -1, 1)))
            best = min(best, float(angle))
    return best


# -- per-frame pieces, against the source's ground truth ----------------------------------------------------
def test_true_spot_positions_map_to_their_reciprocal_lattice_points(source, detector) -> None:
    b_matrix = source.cell.reciprocal_basis()
    for index in range(4):
        frame = source.frame(index)
        spots, hkl = frame.metadata["spots"], frame.metadata["hkl"]
        q = detector.flat_to_q(spots[:, 0], spots[:, 1])
        expected = hkl @ (frame.metadata["orientation"] @ b_matrix).T
        # Off by the excitation error (along the ray) only: far below the 1/79 Å⁻¹ lattice spacing.
        assert np.max(np.linalg.norm(q - expected, axis=1)) < 0.003
        slow, fast, forward = detector.q_to_assembled(q)
        module, row, col, on_module = detector.assembled_to_flat(slow, fast)
        assert forward.all() and on_module.all()
        np.testing.assert_allclose(module * 192 + row, spots[:, 0], atol=1e-6)
        np.testing.assert_allclose(col, spots[:, 1], atol=1e-6)


def test_spot_finder_recovers_the_bright_true_spots(source) -> None:
    frame = source.frame(1)
    truth = frame.metadata["spots"]
    bright = truth[truth[:, 2] >= 30]
    found = find_spots(frame.arrays["data"])
    distance = np.hypot(bright[:, None, 0] - found[None, :, 0], bright[:, None, 1] - found[None, :, 1]).min(axis=1)
    assert len(bright) > 30
    assert np.mean(distance < 0.5) > 0.9
    assert len(found) < 1.5 * len(truth)  # not a spray of noise


def dense_spot_finder(modules: np.ndarray, threshold: float = 1.5, grow: int = 1) -> np.ndarray:
    """The spot finder written the plain way (whole-image float signal, scipy.ndimage labels, lexsort), as the
    reference the sparse one must agree with exactly."""
    from scipy import ndimage

    _, rows, cols = modules.shape
    background = modules[:, ::3, ::3].mean(axis=(1, 2), dtype=np.float64).astype(np.float32)
    signal = modules.astype(np.float32) - background[:, None, None]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    labels, n = ndimage.label(signal > threshold, structure=structure)
    core = np.flatnonzero(labels)
    label = labels.reshape(-1)[core]
    pixels = np.bincount(label, minlength=n + 1)
    row, col = (core // cols) % rows, core % cols
    index, owner = [core], [label]
    for dr in range(-grow, grow + 1):
        for dc in range(-grow, grow + 1):
            inside = (row + dr >= 0) & (row + dr < rows) & (col + dc >= 0) & (col + dc < cols) & bool(dr or dc)
            index.append(core[inside] + dr * cols + dc)
            owner.append(label[inside])
    index, owner = np.concatenate(index), np.concatenate(owner)
    order = np.lexsort((-owner, index))
    index, owner = index[order], owner[order]
    first = np.r_[True, index[1:] != index[:-1]]
    index, owner = index[first], owner[first]
    values = signal.reshape(-1)[index].astype(np.float64)
    weights = np.clip(values, 0.0, None)
    total = np.bincount(owner, values, n + 1)
    weight_sum = np.maximum(np.bincount(owner, weights, n + 1), 1e-12)
    slow = np.bincount(owner, weights * (index // cols), n + 1) / weight_sum
    fast = np.bincount(owner, weights * (index % cols), n + 1) / weight_sum
    keep = (pixels >= 2) & (total >= 6.0)
    keep[0] = False
    spots = np.stack([slow[keep], fast[keep], total[keep]], axis=1)
    return spots[np.argsort(-spots[:, 2], kind="stable")].astype(np.float32)


def test_sparse_spot_finder_agrees_exactly_with_the_dense_one(source) -> None:
    for event in (1, 2):
        modules = source.frame(event).arrays["data"]
        np.testing.assert_array_equal(find_spots(modules), dense_spot_finder(modules))
        calibrated = modules.astype(np.float32) * 0.5  # the float path
        np.testing.assert_array_equal(find_spots(calibrated), dense_spot_finder(calibrated))


def test_a_frame_without_image_or_verdict_is_a_clear_error() -> None:
    from photonstream.consumers.xtal.spots import find_hit
    from photonstream.frames import Frame
    from photonstream.processing.hitfinder import HitfinderOptions

    vetoed = Frame(event=4, arrays={}, metadata={"hit": False, "n_peaks": 3})
    assert find_hit(vetoed, None, HitfinderOptions()).n_peaks == 3
    with pytest.raises(ConfigError, match="event 4 has neither a hit verdict nor an array 'data'"):
        find_hit(Frame(event=4, arrays={}), None, HitfinderOptions())


def test_reflections_near_the_sphere_are_those_of_the_full_computation(source, detector) -> None:
    integrator = Integrator(detector, source.cell, IntegrationSettings())
    frame = source.frame(3)
    orientation = frame.metadata["orientation"]
    integrator.learn(frame.metadata["hkl"], orientation)  # a fitted cutoff, not the constant upper bound
    q = integrator.hkl @ (orientation @ integrator.b_matrix).T
    full = np.flatnonzero(np.abs(integrator.excitation_errors(q)) < integrator.cutoff(np.linalg.norm(q, axis=1)))
    near = integrator.near_sphere(orientation)
    assert len(full) > 50
    np.testing.assert_array_equal(near, full)


def test_pair_indexer_finds_the_true_orientation_up_to_symmetry(source, detector) -> None:
    cell = source.cell
    rotations = laue_rotations("P43212")
    indexer = KnownCellIndexer(cell, detector.wavelength_a, rotations)
    angles, indexed_fraction = [], []
    for index in range(10):
        frame = source.frame(index)
        spots = find_spots(frame.arrays["data"])
        result = indexer.index(detector.flat_to_q(spots[:, 0], spots[:, 1]))
        assert result is not None, f"event {index} not indexed"
        angles.append(
            misorientation_deg(result.orientation, frame.metadata["orientation"], cell.reciprocal_basis(), rotations)
        )
        indexed_fraction.append(result.n_indexed / len(spots))
        np.testing.assert_allclose(result.cell, cell.as_tuple(), rtol=0.01)
    assert max(angles) < 0.2
    assert np.mean(indexed_fraction) > 0.8


def test_pair_indexer_rejects_noise(detector) -> None:
    rng = np.random.default_rng(3)
    indexer = KnownCellIndexer(UnitCell(79.1, 79.1, 37.9), detector.wavelength_a, laue_rotations("P43212"))
    spots = np.column_stack([rng.uniform(0, 4 * 192, 80), rng.uniform(0, 192, 80)])
    assert indexer.index(detector.flat_to_q(spots[:, 0], spots[:, 1])) is None
    assert indexer.index(np.zeros((2, 3))) is None  # too few spots


def test_integrated_intensities_follow_the_recorded_photons(source, detector) -> None:
    indexer = KnownCellIndexer(source.cell, detector.wavelength_a, laue_rotations("P43212"))
    # A wide cutoff predicts the weak partials too (the default keeps only the nearly full ones).
    integrator = Integrator(detector, source.cell, IntegrationSettings(box_half=2, cutoff_sigmas=3.0))
    measured, recorded = [], []
    for index in range(8):
        frame = source.frame(index)
        spots = find_spots(frame.arrays["data"])
        result = indexer.index(detector.flat_to_q(spots[:, 0], spots[:, 1]))
        assert result is not None
        integrator.learn(result.hkl[result.indexed], result.orientation)
        reflections = integrator.integrate(frame.arrays["data"], result.orientation)
        # The found orientation may be a symmetry mate of the truth: compare by position, not by index.
        truth = frame.metadata["spots"]
        distance = np.hypot(
            truth[:, None, 0] - reflections.slow[None, :], truth[:, None, 1] - reflections.fast[None, :]
        )
        nearest = distance.argmin(axis=1)
        close = distance[np.arange(len(truth)), nearest] < 0.5
        assert close.mean() > 0.85  # nearly every recorded spot is predicted
        measured.append(reflections.intensity[nearest[close]])
        recorded.append(truth[close, 2])
    assert np.corrcoef(np.concatenate(measured), np.concatenate(recorded))[0, 1] > 0.98
    _, beta = integrator.excitation.coefficients()
    assert beta > 0  # excitation errors grow with resolution (mosaic spread)


def test_frames_scaled_to_a_reference_merge_to_the_relative_intensities() -> None:
    rng = np.random.default_rng(8)
    cell = UnitCell(79.1, 79.1, 37.9)
    source = {"generator": "synthetic-diffraction", "unit_cell": list(cell.as_tuple()), "seed": 2}
    source |= {"space_group": "P43212", "atoms": 60, "b_factor": 15.0}
    reference = reference_from_source(source)
    assert reference is not None
    all_hkl = symmetry_unique(hkl_box(11, 11, 7)[1:], "P43212")[0]
    truth = reference(all_hkl)
    merger = Merger(reference=reference)
    scaler = FrameScaler("model", cell, reference)  # as a worker scaling to a reference model does
    frame_scale = {}
    for event in range(60):
        picked = rng.choice(len(all_hkl), 150, replace=False)
        scale = rng.uniform(0.5, 2.0)
        frame_scale[event] = scale
        intensity = scale * truth[picked] * rng.uniform(0.7, 1.3, len(picked))
        reflections = {"hkl": all_hkl[picked], "I": intensity, "sigma": np.sqrt(np.abs(intensity) + 1)}
        reflections["scale"] = scaler.scale(all_hkl[picked], intensity)
        indexed = event % 10 != 0
        merger.add(
            {"event": event, "hit": True, "true_hit": True, "indexed": indexed, "cell": cell.as_tuple()}
            | {"reflections": reflections}
        )
    merger.add({"event": 99, "hit": False, "true_hit": True, "indexed": False})
    report = merger.report()
    assert report["indexing_rate"] == pytest.approx(54 / 61, abs=1e-4)
    assert report["hit_recall"] == pytest.approx(60 / 61, abs=1e-4)
    assert report["cc_reference"] > 0.95
    merged = merger.merged()
    events = sorted(merged.frame_scales)
    applied = np.array([frame_scale[e] for e in events])
    fitted = np.array([merged.frame_scales[e] for e in events])
    assert np.std(applied * fitted) / np.mean(applied * fitted) < 0.05  # k_f undoes each frame's scale
    assert report["cell"]["std"] == [0.0] * 6


def test_results_survive_the_wire() -> None:
    hkl = np.arange(6, dtype=np.int32).reshape(2, 3)
    record = {"type": "result", "event": 3, "reflections": {"hkl": hkl}, "orientation": np.eye(3), "x": np.float32(1.5)}
    back = unpack(pack(record))
    np.testing.assert_array_equal(back["reflections"]["hkl"], record["reflections"]["hkl"])
    assert back["reflections"]["hkl"].dtype == np.int32 and back["x"] == 1.5
    np.testing.assert_array_equal(back["orientation"], np.eye(3))


def test_worker_always_sends_an_end_record_even_when_it_fails(source) -> None:
    records: list[dict[str, Any]] = []
    with pytest.raises(ConfigError, match="before the start message"):
        run_xtal_worker(iter([source.frame(0)]), records.append, worker_id="w")
    assert records[-1]["type"] == "end" and "before the start message" in records[-1]["error"]
    info = source.open()
    anonymous = StartMessage(stream_id="s", geometry=info.geometry, source={"layout": info.details["layout"]})
    with pytest.raises(ConfigError, match="unit_cell"):
        run_xtal_worker(iter([anonymous]), records.append)
    assert records[-1]["type"] == "end" and "unit_cell" in records[-1]["error"]


def test_options_refuse_unknown_fields_and_bad_values() -> None:
    with pytest.raises(ValueError, match="tolerance"):
        XtalOptions(tolerance=2.0)
    with pytest.raises(ValueError, match="extra"):
        XtalOptions(box=3)


@needs("cctbx")
def test_cctbx_after_scipy_is_refused_not_a_crash() -> None:
    code = "import scipy.special\nfrom photonstream.consumers.xtal._cctbx import require_cctbx\nrequire_cctbx('MTZ')"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr[-500:]  # a Python exception, not SIGSEGV
    assert "ImportOrderError" in done.stderr and "scipy.special" in done.stderr


@needs("cctbx")
@pytest.mark.slow
def test_worker_on_a_plain_iterator_with_cctbx_indexing() -> None:
    """run_xtal_worker over a list of messages, results to a callable, cctbx's dps indexer (in a fresh process)."""
    code = f"""
import json
import numpy as np
from photonstream.consumers.xtal import XtalOptions, run_xtal_worker
from photonstream.frames import EndMessage, StartMessage
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions
src = SyntheticDiffraction(SyntheticDiffractionOptions(**{DETECTOR!r}, events=5, hit_fraction=0.7, seed=4))
info = src.open()
start = StartMessage(stream_id="it", geometry=info.geometry, source=info.details)
frames = list(src.events())
records = []
run_xtal_worker(iter([start, *frames, EndMessage("it", 5)]), records.append, XtalOptions(indexing="dps"))
truth = {{f.event: f.metadata for f in frames}}
results = [r for r in records if r["type"] == "result"]
print(json.dumps({{"kinds": [r["type"] for r in records],
    "true_hits": sum(bool(m["true_hit"]) for m in truth.values()),
    "indexed": [r["event"] for r in results if r["indexed"]],
    "hits": [e for e, m in truth.items() if m["true_hit"]],
    "reflections": min((len(r["reflections"]["hkl"]) for r in results if r["indexed"]), default=0),
    "cells": [r["cell"] for r in results if r["indexed"]]}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["kinds"][0] == "start" and out["kinds"][-1] == "end" and out["kinds"].count("result") == 5
    assert out["hits"] and out["indexed"] == out["hits"]
    assert out["reflections"] > 20
    np.testing.assert_allclose(out["cells"], [[79.1, 79.1, 37.9, 90, 90, 90]] * len(out["cells"]), rtol=0.01)


@needs("cctbx")
def test_worker_gives_the_same_results_when_misses_come_without_their_image() -> None:
    """The demo's veto pattern: hitfinder → thumbnail → veto → compress, over msgpack, against the full frames."""
    code = f"""
import json
import numpy as np
from photonstream.consumers.xtal import run_xtal_worker
from photonstream.frames import EndMessage, StartMessage
from photonstream.serializers.msgpack import MsgpackOptions, MsgpackSerializer
from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions
from tests.processing._steps import make_step
src = SyntheticDiffraction(SyntheticDiffractionOptions(**{DETECTOR!r}, events=16, hit_fraction=0.4, seed=8))
info = src.open()
start = StartMessage(stream_id="v", geometry=info.geometry, source=info.details)
wire = MsgpackSerializer(MsgpackOptions())
def results(steps):
    steps = [make_step(s) for s in steps]
    frames = []
    for frame in src.events():
        for step in steps:
            (frame,) = step.apply(frame)
        frames.append(wire.decode(wire.encode(frame)))
    records = []
    run_xtal_worker(iter([start, *frames, EndMessage("v", 16)]), records.append)
    kept = sum("data" in f.arrays for f in frames)
    fields = ("event", "hit", "indexed", "n_spots")
    return kept, [{{k: r.get(k) for k in fields}} | {{"I": r["reflections"]["I"].tolist() if r["indexed"] else None}}
                  for r in records if r["type"] == "result"]
hitfinder = {{"type": "hitfinder", "algorithm": "numpy"}}
veto = [hitfinder, {{"type": "thumbnail", "size": 32}}, {{"type": "veto"}},
        {{"type": "compress", "codec": "bslz4", "skip_missing": True}}]
full_kept, full = results([hitfinder])
veto_kept, vetoed = results(veto)
print(json.dumps({{"full": full, "vetoed": vetoed, "full_kept": full_kept, "veto_kept": veto_kept}}))
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    hits = [r["event"] for r in out["full"] if r["hit"]]
    assert 3 <= len(hits) < 16 and out["full_kept"] == 16 and out["veto_kept"] == len(hits)
    assert out["vetoed"] == out["full"]  # every event, the same verdicts, spots and intensities
    assert any(r["indexed"] for r in out["full"])


# -- the distributed run ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory: pytest.TempPathFactory) -> LocalRun:
    for module in ("cctbx", "pyFAI"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed")
    source = {"type": "synthetic-diffraction", **DETECTOR, "events": RUN_EVENTS, "hit_fraction": 0.8, "seed": RUN_SEED}
    return run_local(source, 2, tmp_path_factory.mktemp("xtal"), WORKER_OPTIONS, report_every=50)


@pytest.mark.slow
def test_two_workers_share_the_frames_and_index_most_true_hits(distributed_run) -> None:
    workers = distributed_run.workers
    assert all(w["frames"] > 0.2 * RUN_EVENTS for w in workers), workers  # both did a share of the work
    assert sum(w["frames"] for w in workers) == RUN_EVENTS
    report = distributed_run.document["report"]
    assert report["frames"] == RUN_EVENTS
    assert report["true_hits"] > 0.6 * RUN_EVENTS
    assert report["indexing_rate"] >= 0.8, report
    assert report["hit_recall"] >= 0.9, report
    print(f"\nindexing rate {report['indexing_rate']}, {distributed_run.seconds:.1f} s for {RUN_EVENTS} events")


@pytest.mark.slow
def test_cell_spread_is_reported_and_small(distributed_run) -> None:
    cell = distributed_run.document["report"]["cell"]
    np.testing.assert_allclose(cell["mean"], [79.1, 79.1, 37.9, 90, 90, 90], rtol=0.003)
    assert max(cell["std"][:3]) < 0.3 and max(cell["std"][3:]) < 0.3
    print(f"\ncell mean {cell['mean']} std {cell['std']}")


@pytest.mark.slow
def test_merged_intensities_correlate_with_the_truth_as_frames_accumulate(distributed_run) -> None:
    history = [h for h in distributed_run.document["history"] if h["cc_reference"] is not None]
    final = distributed_run.document["report"]["cc_reference"]
    assert final >= 0.8, history
    assert history[-1]["frames"] == RUN_EVENTS
    assert history[0]["cc_reflections"] < 0.8 * history[-1]["cc_reflections"]  # more frames, more reflections
    streamed = [r["frames"] for r in distributed_run.reports]
    assert streamed[: len(streamed) - 1] == list(range(50, RUN_EVENTS + 1, 50))  # running reports, then final
    trend = [(h["frames"], h["cc_reference"], h["cc_reflections"]) for h in history]
    print(f"\nframes, CC with the truth, reflections in it: {trend}")


@pytest.mark.slow
def test_mtz_is_readable_by_iotbx(distributed_run) -> None:
    code = (
        "import json, sys\nfrom photonstream.consumers.xtal._cctbx import read_mtz\n"
        "m = read_mtz(sys.argv[1])\n"
        "print(json.dumps({'labels': m['labels'], 'sg': m['space_group'], 'cell': m['unit_cell'], 'n': len(m['hkl']),"
        " 'positive': float((m['intensity'] > 0).mean()), 'sigma_ok': bool((m['sigma'] > 0).all())}))"
    )
    command = [sys.executable, "-c", code, str(distributed_run.mtz)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    mtz = json.loads(done.stdout)
    assert mtz["sg"] == "P 43 21 2"
    np.testing.assert_allclose(mtz["cell"], [79.1, 79.1, 37.9, 90, 90, 90])
    assert any(label.startswith("I,SIGI") for label in mtz["labels"]) and "N" in mtz["labels"]
    assert mtz["n"] == distributed_run.document["report"]["unique_reflections"]
    assert mtz["positive"] > 0.8 and mtz["sigma_ok"]


@pytest.mark.slow
def test_virtual_powder_has_peaks_at_the_crystal_d_spacings(distributed_run) -> None:
    powder = distributed_run.document["powder"]
    d = np.array(powder["d_spacing"])
    intensity = np.array(powder["intensity"])
    assert len(d) == WORKER_OPTIONS["powder_bins"] and powder["frames"] > 0.6 * RUN_EVENTS
    # Expected pattern: Σ |F|² of every reflection (all symmetry mates) in each q bin, from the true model.
    cell = UnitCell(79.1, 79.1, 37.9)
    hkl = hkl_box(27, 27, 13, negative=True)
    q = cell.resolution(hkl)
    inside = (q > 0) & (q <= 1 / d.min())
    truth = structure_model_for(SyntheticDiffractionOptions(**DETECTOR, seed=RUN_SEED)).intensities(hkl[inside])
    q_bins = 1.0 / d
    step = q_bins[1] - q_bins[0]  # pyFAI's bins are even in q
    edges = np.concatenate([[q_bins[0] - step / 2], q_bins + step / 2])
    expected = np.histogram(q[inside], bins=edges, weights=truth)[0]
    # pyFAI's intensity is the mean per pixel of each ring: spread the expected photons over the ring's area.
    wavelength = 12398.41984 / 9500.0
    radius_px = 0.1 * np.tan(2 * np.arcsin(wavelength * edges / 2)) / 200e-6
    cc = np.corrcoef(intensity, expected / np.diff(np.pi * radius_px**2))[0, 1]
    print(f"\npowder vs expected pattern: CC {cc:.3f} over {len(d)} bins")
    assert cc > 0.5
    assert np.isfinite(intensity).all() and intensity.max() > 3 * intensity.min()  # rings above the background


@pytest.mark.slow
def test_merging_statistics_without_truth_agree_with_the_truth(distributed_run) -> None:
    """CC* (from CC½, no truth needed) against the CC of the merged intensities with the simulator's own, by shell."""
    merging = distributed_run.document["report"]["merging"]
    assert merging is not None and len(merging["shells"]) == 10
    code = (
        "import json, sys\nfrom photonstream.consumers.xtal._cctbx import read_mtz\nm = read_mtz(sys.argv[1])\n"
        "print(json.dumps({'hkl': m['hkl'].tolist(), 'I': m['intensity'].tolist()}))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(distributed_run.mtz)], cwd=REPO, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    mtz = json.loads(done.stdout)
    hkl, merged = np.array(mtz["hkl"]), np.array(mtz["I"])
    options = SyntheticDiffractionOptions(**DETECTOR, events=RUN_EVENTS, hit_fraction=0.8, seed=RUN_SEED)
    inverse_d = UnitCell(*options.unit_cell).resolution(hkl)
    # what the simulator put on the detector: the model's |F|² to its resolution limit, nothing beyond (the
    # workers integrate to the detector's corner; the statistics must find that edge themselves)
    truth = np.where(inverse_d <= 1 / options.resolution_limit_a, structure_model_for(options).intensities(hkl), 0.0)
    compared = []
    for row in merging["shells"]:
        inside = (inverse_d >= 1 / row["d_max"] - 1e-6) & (inverse_d <= 1 / row["d_min"] + 1e-6)
        if inside.sum() >= 100 and row["cc_star"] is not None:
            signal = truth[inside].std() > 0  # a shell beyond the simulated edge: no signal, a true CC of 0
            true_cc = float(np.corrcoef(merged[inside], truth[inside])[0, 1]) if signal else 0.0
            compared.append((row["d_min"], row["cc_half"], row["cc_star"], round(true_cc, 4)))
    print(f"\nshells (d_min, CC½, CC*, CC with the truth): {compared}")
    assert len(compared) >= 5, merging["shells"]
    for d_min, _cc_half, star, true_cc in compared:
        assert abs(star - true_cc) <= 0.05, (d_min, compared)
    overall = merging["overall"]
    model = structure_model_for(options).intensities(hkl)
    allowed = model > 1e-9 * model.max()  # the simulator's own test for a systematic absence
    assert len(hkl) == distributed_run.document["report"]["unique_reflections"]
    assert overall["unique"] == int(allowed.sum()) < len(hkl)  # absences integrated, not counted as unique
    assert 0 < overall["completeness"] <= 1 and overall["multiplicity"] > 1
    assert 2.85 <= merging["resolution"]["cc_half"] <= 3.1, merging["resolution"]  # spots were simulated to 3.0 Å
