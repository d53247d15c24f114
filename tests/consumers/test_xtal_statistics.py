"""Merging statistics without ground truth (issue 15): checked against a truth the test knows.

A P4₃2₁2 cell to 1.4 Å (24,313 unique reflections); true intensities from Wilson's distribution; 300 frames, each
observing a random tenth of the reflections with a per-frame scale (undone by the workers' Wilson scaling, see
``scaling``) and noise that grows with resolution, so CC½
falls from ~0.99 to ~0.25 over the shells: the range a resolution cut at CC½ = 0.3 looks at (much below it CC* is
steep, dCC*/dCC½ > 1.5, and the sampling noise of CC½ alone nears 0.05). CC* from CC½ must match the correlation
of the merged intensities with the truth within 0.05 in every shell with ≥ 100 reflections; completeness and
multiplicity must equal a direct count.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from photonstream.consumers.xtal.partial_sums import PartialSums
from photonstream.consumers.xtal.scaling import FrameScaler
from photonstream.consumers.xtal.statistics import cc_star, data_enough, half_of, merging_statistics, shell_edges
from photonstream.sources._crystal import UnitCell, enumerate_hkl, symmetry_unique

CELL = UnitCell(79.1, 79.1, 37.9)  # tetragonal lysozyme
D_MIN = 1.4
FRAMES = 300


@pytest.fixture(scope="module")
def run() -> dict:
    rng = np.random.default_rng(7)
    possible, _ = symmetry_unique(enumerate_hkl(CELL, D_MIN), "P43212")
    truth = rng.exponential(1000.0, len(possible))
    inverse_d = CELL.resolution(possible)
    noise = 0.2 + 6.0 * (inverse_d / inverse_d.max()) ** 4  # relative error per observation, by resolution
    scaler = FrameScaler("wilson", CELL)
    frames, sums = [], PartialSums()
    for event in range(FRAMES):
        seen = np.flatnonzero(rng.random(len(possible)) < 0.1)
        scale = rng.uniform(0.5, 2.0)
        error = noise[seen] * truth[seen].mean()
        frame = (possible[seen], scale * (truth[seen] + rng.normal(0, error)), scale * error, 1000 + 3 * event)
        k = scaler.scale(frame[0], frame[1])
        assert k is not None
        sums.add_frame(*frame[:3], k, frame[3])
        frames.append(frame)
    return {"possible": possible, "truth": truth, "table": sums.merged(), "frames": frames}


def test_half_sets_split_the_frames_evenly_and_stably() -> None:
    events = np.arange(10_000)
    halves = half_of(events)
    assert 0.47 < halves.mean() < 0.53
    assert np.array_equal(half_of(events[:100]), halves[:100])  # a frame keeps its half as the run grows


def test_cc_star_matches_the_correlation_with_the_truth_in_every_shell(run: dict) -> None:
    merged_table, truth, possible = run["table"], run["truth"], run["possible"]
    table = merging_statistics(merged_table, CELL.resolution, possible)
    assert table is not None and len(table["shells"]) == 10
    lookup = {row.tobytes(): value for row, value in zip(possible.astype(np.int32), truth, strict=True)}
    true_of_unique = np.array([lookup[row.tobytes()] for row in merged_table.hkl.astype(np.int32)])
    merged = merged_table.mean
    inverse_d = CELL.resolution(merged_table.hkl)
    compared = []
    for row in table["shells"]:
        inside = (inverse_d >= 1 / row["d_max"] - 1e-6) & (inverse_d <= 1 / row["d_min"] + 1e-6)
        if inside.sum() < 100 or row["cc_star"] is None:
            continue
        true_cc = float(np.corrcoef(merged[inside], true_of_unique[inside])[0, 1])
        compared.append((row["d_min"], row["cc_half"], row["cc_star"], round(true_cc, 4)))
    for _d, _half, star, true_cc in compared:
        assert abs(star - true_cc) <= 0.05, compared
    assert len(compared) >= 8, compared
    cc_halves = [c[1] for c in compared]
    assert cc_halves[0] > 0.9 and cc_halves[-1] < 0.5, compared  # the table spans strong to weak data


def test_completeness_and_multiplicity_equal_a_direct_count(run: dict) -> None:
    possible = run["possible"]
    kept = np.ones(len(possible), bool)
    kept[::7] = False  # reflections never observed: completeness must notice
    wanted = {row.tobytes() for row in possible[kept].astype(np.int32)}
    sums, observed = PartialSums(), []
    for hkl, intensity, sigma, event in run["frames"]:
        keep = np.array([row.tobytes() in wanted for row in hkl.astype(np.int32)])
        sums.add_frame(hkl[keep], intensity[keep], sigma[keep], 1.0, event)
        observed.append(hkl[keep])
    unique, multiplicity = np.unique(np.concatenate(observed), axis=0, return_counts=True)  # the direct count
    table = merging_statistics(sums.merged(), CELL.resolution, possible)
    assert table is not None
    inverse_d_seen = CELL.resolution(unique)
    edges = shell_edges(inverse_d_seen, 10)  # the table's shells: equal volume between the extremes observed
    inverse_d_possible = CELL.resolution(possible)
    possible_shell = np.digitize(inverse_d_possible, edges[1:-1])
    seen_shell = np.digitize(inverse_d_seen, edges[1:-1])
    for index, row in enumerate(table["shells"]):
        seen = seen_shell == index
        assert row["unique"] == int(seen.sum()) and row["observations"] == int(multiplicity[seen].sum())
        assert row["possible"] == int(np.sum(possible_shell == index))
        assert row["completeness"] == pytest.approx(seen.sum() / row["possible"], abs=1e-4) and row["completeness"] < 1
        assert row["multiplicity"] == pytest.approx(multiplicity[seen].sum() / seen.sum(), abs=1e-3)
    overall = table["overall"]
    assert overall["unique"] == int(kept.sum()) and overall["possible"] == len(possible)
    assert overall["completeness"] == pytest.approx(kept.sum() / len(possible), abs=1e-4)
    assert overall["observations"] == sum(len(hkl) for hkl in observed)


def test_resolution_estimate_is_the_last_shell_above_the_cut(run: dict) -> None:
    table = merging_statistics(run["table"], CELL.resolution, run["possible"])
    assert table is not None
    rows = table["shells"]
    above = [row["d_min"] for row in rows if row["cc_half"] is not None and row["cc_half"] >= 0.3]
    first_below = next(i for i, row in enumerate(rows) if row["cc_half"] < 0.3)
    assert table["resolution"]["cc_half"] == rows[first_below - 1]["d_min"] == above[first_below - 1]


def test_cc_star_of_known_values() -> None:
    assert cc_star(1.0) == 1.0 and cc_star(0.0) == 0.0 and cc_star(None) is None
    assert cc_star(0.5) == pytest.approx(math.sqrt(2 / 3))


def test_data_enough_extrapolates_the_curves() -> None:
    history = [{"indexed": 100, "completeness": 1 - math.exp(-1), "outer_cc_half": 0.2}]
    readout = data_enough(history, rate_per_s=10.0, completeness=1 - math.exp(-3), outer_cc_half=0.5)
    assert readout is not None
    # completeness: τ = 100 → 300 frames for 1 − e⁻³; CC½: a = 0.2 / (100·0.8) → 400 frames for 0.5
    assert readout["more_indexed_frames"] == 300 and readout["limited_by"] == "outer-shell CC½"
    assert readout["more_seconds"] == 30.0 and readout["enough"] is False
    done = data_enough([{"indexed": 500, "completeness": 0.99, "outer_cc_half": 0.6}], 10.0)
    assert done is not None and done["enough"] and done["more_indexed_frames"] == 0
