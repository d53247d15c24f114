"""What the merger publishes for the API: each running report as typed results (hit rate, indexing rate, the
unit cell), through a ``ResultSink`` (``photonstream.client.ResultPublisher``)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from photonstream.errors import PhotonstreamError

log = logging.getLogger(__name__)


class ResultSink(Protocol):
    """Where results go (``photonstream.client.ResultPublisher``)."""

    def publish(self, kind: str, data: dict[str, Any], *, frames: tuple[int, int] | None = None) -> int: ...


def report_results(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """A merger report as typed results: hit rate, indexing rate, and the unit cell once frames are indexed."""
    found = [
        ("hit_rate", {"frames": report["frames"], "hits": report["hits_found"]}),
        ("indexing_rate", {"frames": report["hits_found"], "indexed": report["indexed"]}),
    ]
    cell = report.get("cell")
    if cell:
        a, b, c, alpha, beta, gamma = cell["mean"]
        found.append(("unit_cell", {"a": a, "b": b, "c": c, "alpha": alpha, "beta": beta, "gamma": gamma,
                                    "std": cell["std"], "count": report["indexed"]}))  # fmt: skip
    return found


MAX_CURVE_POINTS = 1000


def merging_result(report: dict[str, Any], curves: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ``merging`` result of a report: its shell table with the curves so far (None without statistics)."""
    statistics = report.get("merging")
    if not statistics:
        return None
    return {"frames": report["frames"], "indexed": report["indexed"], "shells": statistics["shells"],
            "overall": statistics["overall"], "resolution": statistics["resolution"],
            "curves": curves[-MAX_CURVE_POINTS:], "data_enough": statistics.get("data_enough")}  # fmt: skip


def with_results(
    on_report: Callable[[dict[str, Any]], None] | None,
    results: ResultSink | None,
    curves: list[dict[str, Any]] | None = None,
) -> Callable[[dict[str, Any]], None] | None:
    """``on_report`` that also publishes each report's results (a refused publish is logged, not fatal);
    ``curves`` is the merger's history (``Merger.history``), published with the shell table."""
    if results is None:
        return on_report

    def report_and_publish(report: dict[str, Any]) -> None:
        if on_report is not None:
            on_report(report)
        found = report_results(report)
        merging = merging_result(report, curves or [])
        if merging is not None:
            found.append(("merging", merging))
        for kind, data in found:
            try:
                results.publish(kind, data)
            except PhotonstreamError as exc:
                log.warning("xtal merger: result %s not published: %s", kind, exc)

    return report_and_publish
