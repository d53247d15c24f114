"""Merging per-frame results: indexing statistics, scaled mean intensities per ASU reflection, CC with the truth.

    run_merger("tcp://*:5700", workers=2, mtz_path="run42.mtz")   # workers: run_xtal_worker(..., "tcp://host:5700")

``Merger.add(result)`` takes the per-frame dicts the workers publish (see ``worker.FrameResult``); delivery is
at-least-once (a worker killed after sending a frame's result but before acking the frame has it redelivered to
another worker), so the first result of each event counts and later copies are only counted as ``duplicates``.
Each result carries its frame's scale k_f (``reflections["scale"]``), which the worker computed alone against a
shared reference (``scaling``); the merger adds k_f·I_fh to running sums per ASU reflection (``partial_sums``),
kept apart by the result's ``group`` (pump-probe "on"/"off"; "all" without one) and by half-set. Nothing is
rescaled later, so a report costs O(unique reflections), and mergers combine: ``batch()`` is a ``partial_sums``
record of everything counted, and ``add_batch`` adds one (refused when any of its events was counted).
``merged()``: I_h = the mean of k_f·I_fh, σ_h = the standard error of that mean (or the propagated σ for a single
observation). ``report()`` gives the rates, the cell spread and, where a reference is known (a synthetic run: the
structure model from the start message's source details), the Pearson CC of merged intensities with the reference
|F|² over reflections seen at least ``min_observations`` times: a diagnostic only, never used for scaling.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from photonstream.consumers.pull import StreamTimeout
from photonstream.consumers.xtal._wire import unpack
from photonstream.consumers.xtal.partial_sums import DEFAULT_GROUP, PartialSums
from photonstream.consumers.xtal.powder import PowderPattern
from photonstream.consumers.xtal.published import ResultSink, with_results
from photonstream.consumers.xtal.scaling import reference_from_source
from photonstream.consumers.xtal.statistics import data_enough, outer_shell, pearson, run_statistics
from photonstream.consumers.xtal.to_structure import StructureFeed

log = logging.getLogger(__name__)

COUNTS = ("frames", "hits_found", "true_hits", "true_hits_found", "indexed", "indexed_true_hits", "unscaled")


@dataclass(frozen=True)
class MergedIntensities:
    hkl: np.ndarray  # (N, 3) int32, ASU
    intensity: np.ndarray
    sigma: np.ndarray
    multiplicity: np.ndarray  # observations per reflection
    frame_scales: dict[int, float]


@dataclass
class Merger:
    min_observations: int = 2
    reference: Callable[[np.ndarray], np.ndarray] | None = None  # for ``cc_reference`` only
    symmetry: tuple[tuple[float, ...], str] | None = None  # (cell, space group): merging statistics by shell
    shells: int = 10
    frames: int = 0
    hits_found: int = 0
    true_hits: int = 0
    true_hits_found: int = 0
    indexed: int = 0
    indexed_true_hits: int = 0
    unscaled: int = 0  # indexed frames whose worker could not determine a scale: not merged
    duplicates: int = 0  # results for an event already counted (redelivered frames), dropped
    by_worker: dict[str, int] = field(default_factory=dict)  # counted results per worker
    cells: list[tuple[float, ...]] = field(default_factory=list)
    sums: PartialSums = field(default_factory=PartialSums)
    frame_scales: dict[int, float] = field(default_factory=dict)  # merged frames' k_f
    group_frames: dict[str, int] = field(default_factory=dict)  # merged frames per group label
    history: list[dict[str, Any]] = field(default_factory=list)
    _seen: set[int] = field(default_factory=set)
    _reference_cache: dict[bytes, float] = field(default_factory=dict)
    _first_at: float | None = None

    def add(self, result: dict[str, Any]) -> bool:
        """Count one frame's result; False (and ``duplicates`` + 1) if its event was already counted."""
        event = int(result["event"])
        if self._first_at is None:
            self._first_at = time.monotonic()
        if event in self._seen:
            self.duplicates += 1
            return False
        self._seen.add(event)
        self.frames += 1
        worker = str(result.get("worker", ""))
        self.by_worker[worker] = self.by_worker.get(worker, 0) + 1
        hit = bool(result.get("hit"))
        true_hit = result.get("true_hit")
        self.hits_found += hit
        indexed = bool(result.get("indexed"))
        if true_hit is not None:
            self.true_hits += bool(true_hit)
            self.true_hits_found += bool(true_hit) and hit
            self.indexed_true_hits += bool(true_hit) and indexed
        if not indexed:
            return True
        self.indexed += 1
        self.cells.append(tuple(float(v) for v in result["cell"]))
        reflections = result.get("reflections") or {}
        hkl = np.asarray(reflections.get("hkl", np.zeros((0, 3))), dtype=np.int32).reshape(-1, 3)
        if len(hkl):
            scale = reflections.get("scale", 1.0)  # none: a result of a worker that does not scale
            if scale is None:
                self.unscaled += 1
                return True
            group = str(result.get("group") or DEFAULT_GROUP)
            self.sums.add_frame(hkl, reflections["I"], reflections["sigma"], float(scale), event, group)
            self.frame_scales[event] = float(scale)
            self.group_frames[group] = self.group_frames.get(group, 0) + 1
        return True

    # -- combining mergers ------------------------------------------------------------------------------------
    def batch(self, worker: str = "") -> dict[str, Any]:
        """Everything counted so far as one ``partial_sums`` record (``_wire.pack``-able), for ``add_batch``."""
        events = np.fromiter(self.frame_scales, dtype=np.int64, count=len(self.frame_scales))
        return {
            "type": "partial_sums",
            "worker": worker,
            "events": np.array(sorted(self._seen), dtype=np.int64),
            "counts": {name: getattr(self, name) for name in COUNTS},
            "by_worker": dict(self.by_worker),
            "cells": np.array(self.cells, dtype=np.float64).reshape(-1, 6),
            "frame_scales": {"events": events, "scales": np.array(list(self.frame_scales.values()))},
            "group_frames": dict(self.group_frames),
            "sums": self.sums.to_dict(),
        }

    def add_batch(self, record: dict[str, Any]) -> bool:
        """Add another merger's ``batch``; False (its events counted as ``duplicates``) if any was counted here."""
        events = [int(e) for e in np.asarray(record["events"], dtype=np.int64).reshape(-1)]
        if self._first_at is None:
            self._first_at = time.monotonic()
        overlap = self._seen.intersection(events)
        if overlap or len(set(events)) != len(events):
            self.duplicates += len(events)
            log.warning("xtal merger: refused a partial-sums batch of %d events from %r: %d already counted",
                        len(events), record.get("worker", ""), len(overlap))  # fmt: skip
            return False
        self._seen.update(events)
        for name in COUNTS:
            setattr(self, name, getattr(self, name) + int(record["counts"].get(name, 0)))
        for table, added in ((self.by_worker, record["by_worker"]), (self.group_frames, record["group_frames"])):
            for key, count in added.items():
                table[str(key)] = table.get(str(key), 0) + int(count)
        self.cells.extend(tuple(float(v) for v in row) for row in np.asarray(record["cells"]).reshape(-1, 6))
        scales = record["frame_scales"]
        events_scaled, values = np.asarray(scales["events"]).tolist(), np.asarray(scales["scales"]).tolist()
        self.frame_scales.update(zip(events_scaled, values, strict=True))
        self.sums.combine(PartialSums.from_dict(record["sums"]))
        return True

    # -- merging ----------------------------------------------------------------------------------------------
    def merged(self, group: str | None = None) -> MergedIntensities:
        """The merged intensities of ``group`` (None: all groups together)."""
        table = self.sums.merged(group)
        return MergedIntensities(table.hkl, table.mean, table.sigma, table.counts, dict(self.frame_scales))

    def cc_with_reference(self, merged: MergedIntensities) -> tuple[float | None, int]:
        """Pearson CC with the reference over reflections seen ``min_observations`` times, and how many."""
        usable = merged.multiplicity >= self.min_observations
        if self.reference is None or usable.sum() < 3:
            return None, int(usable.sum())
        truth = self._reference(merged.hkl[usable])
        return pearson(merged.intensity[usable], truth), int(usable.sum())

    def _reference(self, hkl: np.ndarray) -> np.ndarray:
        assert self.reference is not None
        keys = [row.tobytes() for row in np.ascontiguousarray(hkl, dtype=np.int32)]
        missing = [i for i, key in enumerate(keys) if key not in self._reference_cache]
        if missing:
            values = self.reference(hkl[missing])
            for i, value in zip(missing, values, strict=True):
                self._reference_cache[keys[i]] = float(value)
        return np.array([self._reference_cache[key] for key in keys])

    # -- reporting --------------------------------------------------------------------------------------------
    def cell_statistics(self) -> dict[str, list[float]] | None:
        if not self.cells:
            return None
        cells = np.array(self.cells)
        return {"mean": cells.mean(axis=0).round(4).tolist(), "std": cells.std(axis=0).round(4).tolist()}

    def merging_statistics(self, group: str | None = None) -> dict[str, Any] | None:
        """The shell table, overall row and resolution estimate (``statistics``); None without symmetry."""
        if self.symmetry is None:
            return None
        return run_statistics(self.sums.merged(group), self.symmetry[0], self.symmetry[1], self.shells)

    def report(self) -> dict[str, Any]:
        merged = self.merged()
        cc, cc_reflections = self.cc_with_reference(merged)
        statistics = self.merging_statistics()
        summary = {
            "frames": self.frames,
            "duplicates": self.duplicates,
            "by_worker": dict(self.by_worker),
            "hits_found": self.hits_found,
            "indexed": self.indexed,
            "unscaled": self.unscaled,
            "true_hits": self.true_hits,
            "indexed_true_hits": self.indexed_true_hits,
            "indexing_rate": round(self.indexed_true_hits / self.true_hits, 4) if self.true_hits else None,
            "indexed_per_hit_found": round(self.indexed / self.hits_found, 4) if self.hits_found else None,
            "hit_recall": round(self.true_hits_found / self.true_hits, 4) if self.true_hits else None,
            "cell": self.cell_statistics(),
            "unique_reflections": len(merged.hkl),
            "observations": int(merged.multiplicity.sum()),
            "mean_multiplicity": round(float(merged.multiplicity.mean()), 3) if len(merged.hkl) else 0.0,
            "cc_reference": None if cc is None else round(cc, 4),
            "cc_reflections": cc_reflections,
            "groups": self.group_summary(),
        }
        point = {key: summary[key] for key in ("frames", "indexed", "cc_reference", "cc_reflections")}
        if statistics is not None:
            overall, outer = statistics["overall"], outer_shell(statistics)
            point.update(cc_half=overall["cc_half"], completeness=statistics["resolution"]["completeness"],
                         outer_cc_half=outer["cc_half"], outer_completeness=outer["completeness"])  # fmt: skip
        self.history.append(point)
        if statistics is not None:
            elapsed = time.monotonic() - self._first_at if self._first_at is not None else 0.0
            statistics["data_enough"] = data_enough(self.history, self.indexed / elapsed if elapsed > 0 else None)
        summary["merging"] = statistics
        return summary

    def group_summary(self) -> dict[str, dict[str, int]]:
        """Merged frames, unique reflections and observations of each group label."""
        summary = {}
        for group in self.sums.groups:
            counts = self.sums.merged(group).counts
            summary[group] = {"frames": self.group_frames.get(group, 0), "unique_reflections": int(np.sum(counts > 0)),
                              "observations": int(counts.sum())}  # fmt: skip
        return summary


def receive_results(endpoint: str, idle_timeout_s: float = 60.0, bind: bool = True) -> Iterator[dict[str, Any]]:
    """Records PUSHed by workers to ``endpoint`` (bound here); raises ``StreamTimeout`` after a silent spell."""
    for record in _receive(endpoint, idle_timeout_s, bind):
        if record is not None:
            yield record


def _receive(
    endpoint: str, idle_timeout_s: float, bind: bool = True, tick_s: float | None = None
) -> Iterator[dict[str, Any] | None]:
    """``receive_results``, yielding ``None`` after every ``tick_s`` of silence too (so the caller can check
    a deadline)."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    (sock.bind if bind else sock.connect)(endpoint)
    wait_s = idle_timeout_s if tick_s is None else min(tick_s, idle_timeout_s)
    try:
        heard = time.monotonic()
        while True:
            if sock.poll(int(wait_s * 1000)):
                heard = time.monotonic()
                yield unpack(sock.recv())
                continue
            if time.monotonic() - heard >= idle_timeout_s:
                raise StreamTimeout(f"xtal merger: no result on {endpoint} within {idle_timeout_s:g} s")
            yield None
    finally:
        sock.close()


@dataclass
class MergeOutcome:
    report: dict[str, Any]
    history: list[dict[str, Any]]
    merged: MergedIntensities
    powder: PowderPattern | None
    workers: dict[str, dict[str, Any]]  # each end record that arrived (its worker's counts)
    workers_missing: list[str]  # workers that sent a start record but no end record (died, or too late)
    mtz_path: str | None
    seconds: float
    results_window_s: float  # first result → last result received: the workers' throughput without start-up


def run_merger(
    results: str | Iterable[dict[str, Any]],
    workers: int = 1,
    *,
    mtz_path: str | Path | None = None,
    report_every: int = 50,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    idle_timeout_s: float = 60.0,
    settle_s: float = 2.0,
    publisher: ResultSink | None = None,
    structure: StructureFeed | None = None,
) -> MergeOutcome:
    """Merge worker records until the run is done; write MTZ at the end if asked.

    ``results`` is an endpoint to bind (workers PUSH to it) or any iterable of records. Every ``report_every``
    frames ``on_report`` gets the running report (rates, cell spread, CC with the reference where known).

    The run is done when ``workers`` end records have arrived, or when it is complete without them: a worker's
    end record carried the stream's end (``events_sent``) and a result has been counted for that many distinct
    events. A worker that dies never sends its end record; its unacked frames are redelivered to the others, so
    every event still gets a result. Once complete, the merger waits at most ``settle_s`` more for the other
    workers' end records (their counts and powder patterns; live workers send them as soon as the buffer ends
    the stream for them, which is when the last frame is acked), then finishes; ``workers_missing`` names the
    workers that started but never ended. The deadline is checked as records arrive and, on an endpoint, every
    quarter second of silence; an iterable that blocks holds the merger until its next record (or its timeout).

    ``publisher`` (a ``photonstream.client.ResultPublisher``) gets each report as typed results for the API: hit
    rate, indexing rate and the mean unit cell. ``structure`` gets the merged data every ``every_s`` while
    frames are indexed, and once more, marked final, at the end (``to_structure``).
    """
    tick_s = max(min(settle_s, 0.25), 0.01)
    records = _receive(results, idle_timeout_s, tick_s=tick_s) if isinstance(results, str) else iter(results)
    merger = Merger()
    on_report = with_results(on_report, publisher, merger.history)
    powder: PowderPattern | None = None
    started: list[str] = []
    finished: dict[str, dict[str, Any]] = {}
    symmetry: dict[str, Any] = {}
    expected_events: int | None = None  # the stream's event count, from a worker's end record
    settle_until: float | None = None
    began = time.perf_counter()
    first_result = last_result = 0.0
    for record in records:
        if record is None:  # a silent tick of the socket
            if settle_until is not None and time.monotonic() >= settle_until:
                break
            continue
        kind = record.get("type")
        if kind == "start":
            if str(record.get("worker")) not in started:
                started.append(str(record.get("worker")))
            if not symmetry:
                symmetry = {k: record[k] for k in ("unit_cell", "space_group", "wavelength_a")}
                merger.reference = reference_from_source(record.get("source") or {})
                merger.symmetry = (tuple(float(v) for v in symmetry["unit_cell"]), str(symmetry["space_group"]))
        elif kind in ("result", "partial_sums"):
            last_result = time.perf_counter()
            first_result = first_result or last_result
            before = merger.frames
            added = merger.add(record) if kind == "result" else merger.add_batch(record)
            due = report_every and merger.frames // report_every > before // report_every
            if added and on_report is not None and due:
                on_report(merger.report())
            if added and structure is not None and symmetry and structure.due(merger.indexed):
                structure.send(merger, symmetry)
        elif kind in ("powder", "end"):
            if record.get("powder") is not None:
                pattern = PowderPattern.from_dict(record["powder"])
                if powder is None:
                    powder = pattern
                else:
                    powder.add(pattern)
            if kind == "end":
                finished[str(record["worker"])] = {k: v for k, v in record.items() if k != "powder"}
                if len(finished) >= workers:
                    break
                stream_end = record.get("stream_end")
                if stream_end is not None:
                    expected_events = int(stream_end["events_sent"])
        if settle_until is None and expected_events is not None and merger.frames >= expected_events:
            settle_until = time.monotonic() + settle_s
        if settle_until is not None and time.monotonic() >= settle_until:
            break
    report = merger.report()
    if on_report is not None:
        on_report(report)
    merged = merger.merged()
    if structure is not None and symmetry:
        structure.send(merger, symmetry, final=True)
    written = None
    if mtz_path is not None and symmetry and len(merged.hkl):
        from photonstream.consumers.xtal._cctbx import write_mtz

        write_mtz(
            str(mtz_path),
            merged.hkl,
            merged.intensity,
            merged.sigma,
            merged.multiplicity,
            tuple(symmetry["unit_cell"]),
            str(symmetry["space_group"]),
            float(symmetry["wavelength_a"]),
        )
        written = str(mtz_path)
    return MergeOutcome(
        report=report,
        history=list(merger.history),
        merged=merged,
        powder=powder,
        workers=finished,
        workers_missing=[worker for worker in started if worker not in finished],
        mtz_path=written,
        seconds=time.perf_counter() - began,
        results_window_s=last_result - first_result,
    )
