"""Merging statistics without ground truth, by resolution shell: what an operator judges a serial run by.

``merging_statistics(table, inverse_d_of, possible)`` takes the merged table (per unique reflection: mean, σ,
multiplicity and each half-set's mean and count, made from running sums by ``partial_sums.PartialSums.merged``, so
no observation list is kept) and the reflections the space group allows to the data's resolution
(``_cctbx.possible_reflections``), and gives per shell and overall:

- observations, unique reflections, completeness (unique / possible), multiplicity (observations / unique);
- ⟨I/σI⟩ of the merged intensities (σ: the standard error of each mean, or the propagated σ of one observation);
- CC½: the Pearson correlation between two half-data-sets, each made of a random half of the *frames* (the half a
  frame goes to is a hash of its event number, so a frame stays in its half as the run grows); CC* =
  sqrt(2·CC½ / (1 + CC½)) (Karplus & Diederichs 2012), the estimated correlation of the full merged set with the
  true signal; Rsplit = (1/√2)·Σ|I₁ − I₂| / (½·Σ(I₁ + I₂)) over reflections in both halves.

Shells have equal reciprocal volume (1/d³ evenly spaced) between the lowest and highest resolution observed, 10 by
default. The resolution estimate is the d_min of the last shell, counted from low resolution, whose CC½ is still
≥ 0.3 (and, separately, whose ⟨I/σI⟩ is ≥ 1). ``data_enough`` extrapolates from the run so far how many more indexed
frames reach a target completeness and outer-shell CC½ (see there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

CC_HALF_CUTOFF = 0.3  # the customary CC½ resolution cut (Karplus & Diederichs 2012)
I_OVER_SIGMA_CUTOFF = 1.0
HASH_MULTIPLIER = 2654435761  # Knuth's multiplicative hash: a frame's half from its event number


@dataclass(frozen=True)
class MergedTable:
    """Per unique ASU reflection (``hkl`` sorted): the merged mean of the scaled observations, its σ, the
    multiplicity, and the mean and count of each half-set of frames (see ``partial_sums.PartialSums.merged``)."""

    hkl: np.ndarray  # (U, 3) int32
    mean: np.ndarray
    sigma: np.ndarray
    counts: np.ndarray
    mean_a: np.ndarray
    count_a: np.ndarray
    mean_b: np.ndarray
    count_b: np.ndarray


def half_of(events: np.ndarray) -> np.ndarray:
    """0 or 1 for each event: a pseudo-random split of the frames that does not change as frames arrive."""
    mixed = (np.asarray(events, dtype=np.uint64) * np.uint64(HASH_MULTIPLIER)) & np.uint64(0xFFFFFFFF)
    return ((mixed >> np.uint64(16)) & np.uint64(1)).astype(np.int8)


def shell_edges(inverse_d: np.ndarray, shells: int) -> np.ndarray:
    """``shells`` + 1 edges in 1/d (1/Å) with equal reciprocal volume between the smallest and largest 1/d."""
    low, high = float(inverse_d.min()), float(inverse_d.max())
    return np.cbrt(np.linspace(low**3, high**3, shells + 1))


def shell_of(inverse_d: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, inverse_d, side="right") - 1, 0, len(edges) - 2)


def cc_star(cc_half: float | None) -> float | None:
    if cc_half is None or cc_half <= 0:
        return None if cc_half is None else 0.0
    return math.sqrt(2 * cc_half / (1 + cc_half))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _shell_row(
    selected: np.ndarray,
    observed: np.ndarray,
    possible: int,
    mean: np.ndarray,
    sigma: np.ndarray,
    counts: np.ndarray,
    halves: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> dict[str, Any]:
    """The statistics of the unique reflections ``selected`` (a mask over ``unique``)."""
    mean_a, count_a, mean_b, count_b = halves
    here = selected & observed
    both = here & (count_a > 0) & (count_b > 0)
    cc_half = pearson(mean_a[both], mean_b[both])
    denominator = 0.5 * float(np.sum(mean_a[both] + mean_b[both]))
    r_split = float(np.sum(np.abs(mean_a[both] - mean_b[both])) / denominator / math.sqrt(2)) if denominator else None
    unique = int(here.sum())
    observations = int(counts[here].sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        i_over_sigma = float(np.mean(mean[here] / sigma[here])) if unique else None
    star = cc_star(cc_half)
    return {
        "observations": observations,
        "unique": unique,
        "possible": possible,
        "completeness": round(unique / possible, 4) if possible else None,
        "multiplicity": round(observations / unique, 3) if unique else None,
        "i_over_sigma": None if i_over_sigma is None else round(i_over_sigma, 3),
        "cc_half": None if cc_half is None else round(cc_half, 4),
        "cc_star": None if star is None else round(star, 4),
        "r_split": None if r_split is None else round(r_split, 4),
        "in_both_halves": int(both.sum()),
    }


def merging_statistics(
    table: MergedTable, inverse_d_of: Any, possible: np.ndarray, shells: int = 10
) -> dict[str, Any] | None:
    """Shell table and overall row (see the module docstring). ``inverse_d_of(hkl)`` gives 1/d (1/Å) of each
    row; ``possible``: the allowed ASU reflections to at least the data's resolution (completeness counts
    against those within the observed range). None before there are observations."""
    if len(table.hkl) == 0:
        return None
    inverse_d = np.asarray(inverse_d_of(table.hkl), dtype=np.float64)
    edges = shell_edges(inverse_d, shells)
    shell = shell_of(inverse_d, edges)
    possible_d = np.asarray(inverse_d_of(possible), dtype=np.float64) if len(possible) else np.zeros(0)
    in_range = (possible_d >= edges[0] - 1e-9) & (possible_d <= edges[-1] + 1e-9)
    possible_shell = shell_of(possible_d[in_range], edges)
    allowed = {row.tobytes() for row in np.ascontiguousarray(possible, dtype=np.int32)}
    observed = np.array([row.tobytes() in allowed for row in np.ascontiguousarray(table.hkl, dtype=np.int32)])
    mean, sigma, counts, size = table.mean, table.sigma, table.counts, len(table.hkl)
    halves = (table.mean_a, table.count_a, table.mean_b, table.count_b)
    rows = []
    for index in range(shells):
        row = _shell_row(shell == index, observed, int(np.sum(possible_shell == index)), mean, sigma, counts, halves)
        row["d_max"] = round(1 / edges[index], 3) if edges[index] > 0 else None
        row["d_min"] = round(1 / edges[index + 1], 3)
        rows.append(row)
    overall = _shell_row(np.ones(size, bool), observed, int(in_range.sum()), mean, sigma, counts, halves)
    overall["d_max"], overall["d_min"] = rows[0]["d_max"], rows[-1]["d_min"]
    resolution = resolution_estimate(rows)
    within = [row for row in rows if resolution["cc_half"] is not None and row["d_min"] >= resolution["cc_half"]]
    unique, possible_there = sum(row["unique"] for row in within), sum(row["possible"] for row in within)
    resolution["completeness"] = round(unique / possible_there, 4) if possible_there else None
    return {"shells": rows, "overall": overall, "resolution": resolution}


def outer_shell(table: dict[str, Any]) -> dict[str, Any]:
    """The outer shell an operator reads: the last one within the CC½ resolution estimate (workers integrate to
    the detector's corner, beyond where the crystals diffract), else the last shell that has a CC½."""
    cut = table["resolution"]["cc_half"]
    rows = [row for row in table["shells"] if row["cc_half"] is not None]
    within = [row for row in rows if cut is not None and row["d_min"] >= cut]
    return (within or rows or table["shells"])[-1]


MIN_CC_HALF_PAIRS = 20


def resolution_estimate(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """d_min of the last shell, from low resolution, with CC½ ≥ 0.3 over at least ``MIN_CC_HALF_PAIRS``
    reflections measured in both halves; and with ⟨I/σI⟩ ≥ 1 (None: not even the first)."""

    def last_shell(key: str, cutoff: float) -> float | None:
        reached = None
        for row in rows:
            value = row[key]
            if value is None or value < cutoff:
                break
            if key == "cc_half" and row.get("in_both_halves", MIN_CC_HALF_PAIRS) < MIN_CC_HALF_PAIRS:
                break  # a correlation of a handful of pairs is noise, however high
            reached = row["d_min"]
        return reached

    return {
        "cc_half": last_shell("cc_half", CC_HALF_CUTOFF),
        "i_over_sigma": last_shell("i_over_sigma", I_OVER_SIGMA_CUTOFF),
        "criteria": f"CC½ ≥ {CC_HALF_CUTOFF} (≥ {MIN_CC_HALF_PAIRS} pairs); ⟨I/σI⟩ ≥ {I_OVER_SIGMA_CUTOFF:g}",
    }


def run_statistics(
    table: MergedTable, cell: tuple[float, ...], space_group: str, shells: int = 10
) -> dict[str, Any] | None:
    """``merging_statistics`` for a run of ``cell`` and ``space_group`` (the allowed reflections from cctbx)."""
    from photonstream.consumers.xtal._cctbx import possible_reflections
    from photonstream.sources._crystal import UnitCell

    if len(table.hkl) == 0:
        return None
    unit_cell = UnitCell(*cell)
    d_min = 1 / float(unit_cell.resolution(table.hkl).max())
    possible = possible_reflections(tuple(cell), space_group, d_min)
    return merging_statistics(table, unit_cell.resolution, possible, shells)


def data_enough(
    history: list[dict[str, Any]], rate_per_s: float | None, completeness: float = 0.95, outer_cc_half: float = 0.5
) -> dict[str, Any] | None:
    """How many more indexed frames (and seconds at the current indexing rate) until the overall completeness and
    the outer shell's CC½ reach their targets, from the latest point of the curves.

    Completeness of random stills grows as 1 − exp(−n/τ) (each frame samples a random slice of reciprocal space):
    τ from the latest (n, completeness). CC½ grows with the multiplicity m ∝ n as m·a / (1 + m·a) (the
    Spearman–Brown form of averaging independent errors): a from the latest (n, CC½). Both are estimates of a
    trend, printed as such; None until both curves have a positive point."""
    points = [h for h in history if h.get("indexed") and h.get("completeness") and h.get("outer_cc_half")]
    if not points:
        return None
    latest = points[-1]
    n = float(latest["indexed"])
    reached = min(float(latest["completeness"]), 0.999999)
    cc = min(float(latest["outer_cc_half"]), 0.999999)
    if reached <= 0 or cc <= 0:
        return None
    tau = -n / math.log(1 - reached)
    frames_completeness = max(0.0, -tau * math.log(1 - completeness) - n) if reached < completeness else 0.0
    per_frame = cc / (n * (1 - cc))
    frames_cc = max(0.0, outer_cc_half / (per_frame * (1 - outer_cc_half)) - n) if cc < outer_cc_half else 0.0
    more = math.ceil(max(frames_completeness, frames_cc))
    return {
        "targets": {"completeness": completeness, "outer_cc_half": outer_cc_half},
        "enough": more == 0,
        "more_indexed_frames": more,
        "more_seconds": round(more / rate_per_s, 1) if rate_per_s else None,
        "limited_by": "completeness" if frames_completeness >= frames_cc else "outer-shell CC½",
    }
