"""The demo's report: what the run did, how fast, and whether analysis kept up (``DemoReport``), and its printing."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclass
class DemoReport:
    stream_id: str
    state: str
    reason: str
    backend: str
    job_id: str | None
    detector: str
    rate_hz: float
    duration_s: float
    events_requested: int
    dashboard: str
    frames_sent: int | None = None  # the pipeline's end message
    frames_analysed: int = 0  # results the merger got
    pipeline: str = ""  # the request's processing steps, as the report's pipeline line says them
    frames_whole: int | None = None  # frames the workers got with their image (hits, sampled misses)
    frames_vetoed: int | None = None  # frames the workers got as metadata + thumbnail only (misses)
    monitor_frames: int = 0  # frames the monitor group (latest) saw
    hits: int = 0
    hit_rate: float | None = None  # hits found by the workers / frames analysed
    true_hit_fraction: float | None = None
    indexed: int = 0
    indexing_rate: float | None = None  # indexed true hits / true hits
    indexed_per_hit: float | None = None
    cc: float | None = None  # merged intensities vs the synthetic truth (Pearson)
    cc_reflections: int = 0
    unique_reflections: int = 0
    mean_multiplicity: float | None = None
    cell: list[float] | None = None
    first_frame_s: float | None = None  # request → first frame at a consumer
    first_result_s: float | None = None  # request → first result at the merger
    first_indexed_s: float | None = None  # request → first indexed result at the merger
    acquisition_fps: float | None = None  # frames / (first → last frame created by the pipeline)
    analysis_fps: float | None = None  # frames / (first → last result at the merger)
    end_to_end_fps: float | None = None  # frames / (first frame created → last result)
    drain_s: float | None = None  # last frame created → last result
    keeps_up: bool | None = None  # rate_reached and analysis_kept_pace (verdict.keep_up_verdict)
    rate_reached: bool | None = None  # acquisition ran at the asked rate (else the producer was too slow)
    analysis_kept_pace: bool | None = None  # every frame analysed, the last result within KEEP_UP_DRAIN_S
    analysis_lag_frames: int | None = None  # frames not yet analysed when the last frame was created
    keeps_up_text: str = "–"  # the verdict as the report says it: "no — acquisition 104.6 of 120 frames/s ..."
    latency_p50_ms: float | None = None  # frame creation → a worker, median over workers' medians
    trainer: dict[str, Any] | None = None
    model: str = ""  # the atomic model the crystal was simulated from and the structure stage refines
    cc_half: float | None = None  # overall CC½ of the merged data (random half-sets of frames)
    completeness: float | None = None  # within the resolution estimate
    resolution_a: float | None = None  # the CC½ ≥ 0.3 estimate
    outer_cc_half: float | None = None
    first_cc_half_s: float | None = None  # first indexed result → first report with a CC½
    r_work: float | None = None
    r_free: float | None = None
    structure_updates: int = 0
    longest_update_s: float | None = None  # the structure stage's slowest update
    final_map_s: float | None = None  # last frame created → the final maps written
    peak_map: str = ""
    top_peaks: list[dict[str, Any]] = field(default_factory=list)
    results_channel: dict[str, Any] = field(default_factory=dict)  # GET /v1/streams/{id}/results at the end
    total_s: float = 0.0
    workdir: str = ""  # the temporary directory (CA, state, logs), removed at the end
    processes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_crystallography(self, merger: dict[str, Any], structure: dict[str, Any], last_frame_at: float | None,
                            first_indexed_at: float | None) -> None:  # fmt: skip
        """The merger's statistics without truth (its final line) and the structure stage's final update."""
        statistics = (merger.get("report") or {}).get("merging") or {}
        overall, resolution = statistics.get("overall") or {}, statistics.get("resolution") or {}
        self.cc_half, self.completeness = overall.get("cc_half"), resolution.get("completeness")
        self.resolution_a, self.outer_cc_half = resolution.get("cc_half"), merger.get("outer_cc_half")
        first_cc_half_at = merger.get("first_cc_half_at")
        if first_indexed_at and first_cc_half_at:
            self.first_cc_half_s = round(max(0.0, first_cc_half_at - first_indexed_at), 2)
        self.r_work, self.r_free = structure.get("r_work"), structure.get("r_free")
        self.structure_updates = int(structure.get("updates") or 0)
        self.longest_update_s = structure.get("longest_update_s")
        if last_frame_at and structure.get("final_map_at"):
            self.final_map_s = round(structure["final_map_at"] - last_frame_at, 2)
        self.peak_map, self.top_peaks = str(structure.get("peak_map") or ""), list(structure.get("top_peaks") or [])


def _value(value: Any, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def print_report(report: DemoReport, console: Console) -> None:
    table = Table(
        title=f"photonstream demo: stream {report.stream_id} {report.state}", title_justify="left", show_header=False
    )
    table.add_column("", style="bold")
    table.add_column("")
    rows = [
        ("run", f"{report.detector}, {report.rate_hz:g} Hz for {report.duration_s:g} s, job on {report.backend}"),
        ("frames", f"{_value(report.frames_sent)} sent, {report.frames_analysed} analysed by the workers"),
        ("pipeline", pipeline_text(report)),
        ("hit rate", f"{_percent(report.hit_rate)} ({report.hits} hits; true {_percent(report.true_hit_fraction)})"),
        ("indexing rate", f"{_percent(report.indexing_rate)} of the true hits ({report.indexed} indexed)"),
        (
            "merged CC",
            f"{_value(report.cc, digits=3)} with the true intensities over {report.cc_reflections} reflections "
            f"({report.unique_reflections} unique, multiplicity {_value(report.mean_multiplicity)})",
        ),
        ("request → first frame", _value(report.first_frame_s, " s")),
        ("request → first result", _value(report.first_result_s, " s")),
        ("request → first indexed", _value(report.first_indexed_s, " s")),
        (
            "throughput",
            f"acquisition {_value(report.acquisition_fps, ' frames/s', 1)}"
            f"{'' if report.rate_reached is not False else ' (below the asked rate)'}, analysis "
            f"{_value(report.analysis_fps, ' frames/s', 1)}, "
            f"end to end {_value(report.end_to_end_fps, ' frames/s', 1)}",
        ),
        ("keeps up", f"{report.keeps_up_text}; latency p50 {_value(report.latency_p50_ms, ' ms')}"),
    ]
    if report.trainer:
        t = report.trainer
        rows.append(
            (
                "hit classifier",
                f"held-out accuracy {_value(t.get('accuracy'), digits=3)} on {t.get('test_events')} frames "
                f"(majority {_value(t.get('majority_baseline'), digits=3)}), trained on {t.get('train_events')}",
            )
        )
    rows.extend(crystallography_rows(report))
    rows.append(("monitor", f"the latest group saw {report.monitor_frames} frames (it never holds the run back)"))
    channel = report.results_channel
    if channel:
        kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(channel.get("kinds", {}).items()))
        rows.append(
            (
                "results channel",
                f"{kinds or 'no results'}; newest: hit rate {_percent(channel.get('hit_rate'))}, "
                f"indexing rate {_percent(channel.get('indexing_rate'))} of hits",
            )
        )
    if report.processes:
        rows.append(("stopped", stopped_text(report)))
    rows.append(("total", _value(report.total_s, " s", 1)))
    for name, text in rows:
        table.add_row(name, text)
    console.print(table)
    for problem in report.problems:
        console.print(f"[yellow]note:[/] {problem}")


def crystallography_rows(report: DemoReport) -> list[tuple[str, str]]:
    peak = report.top_peaks[0] if report.top_peaks else None
    peak_text = (f"top {report.peak_map} peak {peak['sign']}{peak['height_sigma']:.1f}σ at "
                 f"{peak['atom']} ({peak['distance_a']:.1f} Å off)") if peak else "no peak above the noise"  # fmt: skip
    return [
        ("merging", f"CC½ {_value(report.cc_half, digits=3)} overall, {_value(report.outer_cc_half, digits=3)} in "
                    f"the outer shell; completeness {_percent(report.completeness)} to "
                    f"{_value(report.resolution_a, ' Å')} (CC½ ≥ 0.3); first CC½ "
                    f"{_value(report.first_cc_half_s, ' s', 1)} after the first indexed frame"),
        ("structure", f"{report.model}: R-work {_value(report.r_work, digits=3)}, R-free "
                      f"{_value(report.r_free, digits=3)} after {report.structure_updates} updates (slowest "
                      f"{_value(report.longest_update_s, ' s', 1)}); final map {_value(report.final_map_s, ' s', 1)} "
                      f"after the last frame; {peak_text}"),
    ]  # fmt: skip


def pipeline_text(report: DemoReport) -> str:
    if report.frames_whole is None or report.frames_vetoed is None:
        return report.pipeline or "–"
    return (
        f"{report.pipeline}; the workers got {report.frames_whole} frames with their image (the hits and a sample "
        f"of misses) and {report.frames_vetoed} misses as metadata + thumbnail"
    )


def stopped_text(report: DemoReport) -> str:
    left = report.processes.get("left") or []
    consumers = len(report.processes.get("consumers") or [])
    state = "nothing left running" if not left else f"[red]still running: {left}[/]"
    return f"API, buffer, {consumers} consumer processes and job {report.job_id or '–'}: {state}"


def print_stopped(report: DemoReport, console: Console) -> None:
    console.print(f"stopped {stopped_text(report)}", highlight=False)
