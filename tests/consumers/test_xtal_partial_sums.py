"""Distributed merging (issue 15, part 2): workers scale their own frames and mergers add partial sums, so one merger
over several mergers equals one merger of everything, to 1e-9 relative (real per-frame results of a short simulated
run, split over three mergers in a random interleaving and combined through the wire)."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from photonstream.consumers.xtal._wire import pack, unpack
from photonstream.consumers.xtal.merge import Merger
from photonstream.consumers.xtal.partial_sums import PartialSums
from photonstream.consumers.xtal.scaling import FrameScaler
from photonstream.consumers.xtal.statistics import half_of
from photonstream.frames import StartMessage
from photonstream.sources._crystal import UnitCell
from tests.consumers.test_xtal import DETECTOR


@pytest.fixture(scope="module")
def run() -> dict[str, Any]:
    if importlib.util.find_spec("cctbx") is None:
        pytest.skip("cctbx is not installed")
    import photonstream.consumers.xtal  # noqa: F401  (cctbx before scipy)
    from photonstream.consumers.xtal.worker import XtalOptions, XtalProcessor
    from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions

    source = SyntheticDiffraction(SyntheticDiffractionOptions(**DETECTOR, events=90, hit_fraction=0.8, seed=21))
    info = source.open()
    start = StartMessage(stream_id="t", geometry=info.geometry, source=info.details)
    processor = XtalProcessor(start, XtalOptions())
    frames = list(source.events())
    results = [unpack(pack({**processor.process(frame), "worker": "w"})) for frame in frames]
    return {"start": processor.start_record(start), "results": results, "processor": processor, "frames": frames}


def merger_for(start: dict[str, Any]) -> Merger:
    return Merger(symmetry=(tuple(start["unit_cell"]), str(start["space_group"])))


def assert_close(got: Any, expected: Any, path: str = "") -> None:
    """Every number of ``got`` equals ``expected``'s to 1e-9 relative, everything else exactly."""
    if isinstance(expected, dict):
        assert set(got) == set(expected), path
        for key in expected:
            assert_close(got[key], expected[key], f"{path}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(got) == len(expected), path
        for index, (a, b) in enumerate(zip(got, expected, strict=True)):
            assert_close(a, b, f"{path}[{index}]")
    elif isinstance(expected, float) and not isinstance(expected, bool):
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-300), path
    else:
        assert got == expected, path


def test_workers_scale_their_frames_and_results_carry_the_scale(run: dict[str, Any]) -> None:
    indexed = [r for r in run["results"] if r["indexed"]]
    assert len(indexed) > 40
    scales = np.array([r["reflections"]["scale"] for r in indexed])
    assert np.all(scales > 0) and np.std(scales) / np.mean(scales) < 0.5
    assert run["start"]["scaling"] == {"reference": "wilson", "wilson_b": 20.0}  # a random-atom model: no truth
    assert all("group" not in r for r in run["results"])  # no laser in the metadata
    frame = run["frames"][0]
    on = run["processor"].process(replace(frame, metadata={**frame.metadata, "laser": True}))
    off = run["processor"].process(replace(frame, metadata={**frame.metadata, "laser": False}))
    assert (on["group"], off["group"]) == ("on", "off")


def test_scalers_undo_a_frames_scale() -> None:
    cell = UnitCell(79.1, 79.1, 37.9)
    hkl = np.array([[h, k, l] for h in range(1, 9) for k in range(h) for l in range(6)])  # noqa: E741
    expected = np.exp(-20.0 * cell.resolution(hkl) ** 2 / 2)
    assert FrameScaler("wilson", cell).scale(hkl, 0.25 * expected) == pytest.approx(4.0, rel=1e-12)
    model = np.linspace(1.0, 50.0, len(hkl))
    by_model = FrameScaler("model", cell, lambda rows: model[: len(rows)])
    assert by_model.scale(hkl, 0.5 * model) == pytest.approx(2.0, rel=1e-12)
    assert FrameScaler("wilson", cell).scale(hkl, -expected) is None  # undetermined: not merged
    assert by_model.scale(hkl[:2], model[:2]) is None


def test_partial_sums_follow_the_merging_rules() -> None:
    """Mean, σ (standard error of the mean for n > 1, else the propagated σ) and half-set means, against a direct
    computation from the observations."""
    rng = np.random.default_rng(3)
    unique = np.array([[1, 2, 3], [-4, 0, 7], [5, 5, 1], [0, 0, 2]])
    sums, observed = PartialSums(), []  # (hkl, k·I, k·σ, half) of each observation
    for event in range(40):
        rows = np.array([3]) if event == 0 else rng.choice(3, rng.integers(1, 4), replace=False)  # (0, 0, 2) once
        intensity, sigma, scale = rng.normal(100, 20, len(rows)), rng.uniform(1, 5, len(rows)), rng.uniform(0.5, 2)
        sums.add_frame(unique[rows], intensity, sigma, scale, event)
        half = int(half_of(np.array([event]))[0])
        observed += [
            (tuple(unique[r]), scale * i, scale * s, half) for r, i, s in zip(rows, intensity, sigma, strict=True)
        ]
    assert {o[3] for o in observed} == {0, 1}
    table = sums.merged()
    assert [tuple(row) for row in table.hkl] == sorted(tuple(row) for row in unique)
    for index, hkl in enumerate(map(tuple, table.hkl)):
        x = np.array([o[1] for o in observed if o[0] == hkl])
        s = np.array([o[2] for o in observed if o[0] == hkl])
        assert table.counts[index] == len(x) and table.mean[index] == pytest.approx(x.mean(), rel=1e-12)
        sigma = np.sqrt(np.sum(s**2)) / len(x) if len(x) == 1 else x.std(ddof=1) / np.sqrt(len(x))
        assert table.sigma[index] == pytest.approx(sigma, rel=1e-9)
        for half, mean, count in ((0, table.mean_a, table.count_a), (1, table.mean_b, table.count_b)):
            picked = [o[1] for o in observed if o[0] == hkl and o[3] == half]
            assert count[index] == len(picked)
            assert mean[index] == pytest.approx(np.mean(picked) if picked else 0.0, rel=1e-12)


def test_one_merger_over_three_equals_one_merger_of_everything(run: dict[str, Any]) -> None:
    results = run["results"]
    single = merger_for(run["start"])
    for result in results:
        single.add(result)
    rng = np.random.default_rng(5)
    workers = [merger_for(run["start"]) for _ in range(3)]
    for index in rng.permutation(len(results)):  # any interleaving, any split
        workers[int(rng.integers(3))].add(results[index])
    assert all(w.indexed > 5 for w in workers)
    combined = merger_for(run["start"])
    for number, worker in enumerate(rng.permutation(3)):
        assert combined.add_batch(unpack(pack(workers[worker].batch(f"merger-{number}"))))
    expected, got = single.merged(), combined.merged()
    assert np.array_equal(got.hkl, expected.hkl) and len(got.hkl) > 500
    np.testing.assert_array_equal(got.multiplicity, expected.multiplicity)
    np.testing.assert_allclose(got.intensity, expected.intensity, rtol=1e-9, atol=0)
    np.testing.assert_allclose(got.sigma, expected.sigma, rtol=1e-9, atol=0)
    assert got.frame_scales == expected.frame_scales
    report, reference = combined.report(), single.report()
    assert reference["merging"]["overall"]["cc_half"] > 0.5  # a real table, not an empty one
    for readout in (report, reference):  # seconds at the indexing rate: each merger's own clock
        assert readout["merging"]["data_enough"].pop("more_seconds") is not None
    assert_close(report, reference)  # counts, cell, multiplicity, and every number of the shell table


def test_a_redelivered_result_or_an_overlapping_batch_counts_once(run: dict[str, Any]) -> None:
    results = [r for r in run["results"] if r["indexed"]][:20]
    merger = merger_for(run["start"])
    for result in results[:10]:
        merger.add(result)
    before = merger.merged()
    assert not merger.add(results[3])  # the same event again
    assert merger.duplicates == 1 and merger.frames == 10
    np.testing.assert_array_equal(merger.merged().intensity, before.intensity)
    upstream = merger_for(run["start"])
    for result in results[9:15]:  # event of results[9] is already counted above
        upstream.add(result)
    assert not merger.add_batch(upstream.batch("late"))
    assert merger.duplicates == 1 + 6 and merger.frames == 10
    np.testing.assert_array_equal(merger.merged().intensity, before.intensity)
    fresh = merger_for(run["start"])
    for result in results[10:15]:
        fresh.add(result)
    assert merger.add_batch(fresh.batch("ok")) and merger.frames == 15
    assert not merger.add(results[12])  # counted through the batch
    assert merger.duplicates == 8


def test_groups_merge_apart_and_add_up_to_the_whole(run: dict[str, Any]) -> None:
    merger, whole = merger_for(run["start"]), merger_for(run["start"])
    for result in run["results"]:
        whole.add(result)
        merger.add({**result, "group": "on" if result["event"] % 3 == 0 else "off"})
    on, off, total = merger.merged("on"), merger.merged("off"), merger.merged()
    assert 10 < len(on.hkl) < len(total.hkl) and 10 < len(off.hkl) < len(total.hkl)
    counts: dict[tuple[int, ...], int] = {}
    for part in (on, off):
        for hkl, n in zip(map(tuple, part.hkl), part.multiplicity, strict=True):
            counts[hkl] = counts.get(hkl, 0) + int(n)
    assert counts == {tuple(h): int(n) for h, n in zip(total.hkl, total.multiplicity, strict=True)}
    np.testing.assert_allclose(total.intensity, whole.merged().intensity, rtol=1e-9)
    groups = merger.report()["groups"]
    assert set(groups) == {"on", "off"}
    assert groups["on"]["frames"] + groups["off"]["frames"] == whole.group_frames["all"]
    assert groups["on"]["observations"] + groups["off"]["observations"] == int(total.multiplicity.sum())
    batch = unpack(pack(merger.batch()))
    again = merger_for(run["start"])
    assert again.add_batch(batch)
    np.testing.assert_array_equal(again.merged("on").multiplicity, on.multiplicity)
