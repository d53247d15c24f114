"""The benchmarks compare only against what they measure in the same invocation: no peer or baseline figure is a
constant, every ratio names its numerator and denominator (cases of the same JSON) with a median over
interleaved rounds, and a paced case the machine cannot keep up with says it saturated instead of a latency."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from benchmarks import buffer as bench_buffer
from benchmarks import pipeline as bench_pipeline

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
CONSTANT_FIGURE = re.compile(r"^[A-Z_]*(PEER|LCLSTREAMER|FASTCACHE|BASELINE|REFERENCE)[A-Z_]*\s*=\s*[\d.]+", re.M)


def test_no_benchmark_divides_by_a_constant_figure() -> None:
    for path in BENCHMARKS.glob("*.py"):
        text = path.read_text()
        assert not CONSTANT_FIGURE.search(text), f"{path.name}: {CONSTANT_FIGURE.search(text).group(0)}"
        assert "PEER_FRAMES_PER_S" not in text and "250 frames/s" not in text, path.name


def _check_ratios(ratios: dict, measured: set[str], rounds: int) -> None:
    assert ratios
    for name, found in ratios.items():
        assert found is not None, name
        assert {found["numerator"], found["denominator"]} <= measured, (name, found)
        assert found["min"] <= found["median"] <= found["max"] and found["rounds"] == rounds, (name, found)


@pytest.mark.slow
def test_pipeline_ratios_come_from_the_same_run_and_a_peer_runs_beside_it() -> None:
    peer = f"{sys.executable} -m tests.bench_peer {{endpoint}} {{events}}"
    summary = bench_pipeline.main(events=24, rounds=2, json_only=True, peers={"stand-in": peer}, peer_end="PEER-END")
    rates = summary["frames_per_s"]
    assert summary["errors"] == {} and all(rate and rate > 0 for rate in rates.values()), summary
    assert {"source", "serializer", "raw_zmq", "pipeline_hdf5", "peer_stand-in"} <= set(rates)
    _check_ratios(summary["ratios"], {*rates, "bound"}, rounds=2)
    assert {"pipeline_hdf5_vs_peer_stand-in", "pipeline_hdf5_vs_bound"} <= set(summary["ratios"])
    assert len(summary["load_average"]["before"]) == 3


@pytest.mark.slow
def test_buffer_ratios_come_from_the_same_run() -> None:
    cases = ("raw_zmq", "buffer_mem", "buffer_disk", "disk_write")
    _, summary = bench_buffer.run(frame_mb=0.25, seconds=0.3, rounds=2, only=cases)
    _check_ratios(summary["ratios"], set(cases), rounds=2)
    assert set(summary["ratios"]) == {"mem_vs_raw", "disk_vs_mem", "disk_vs_file_write"}


@pytest.mark.slow
def test_a_paced_case_beyond_the_machine_says_it_saturated() -> None:
    _, summary = bench_buffer.run(frame_mb=1, seconds=0.5, rounds=1, only=("latency",), rate_hz=1e6)
    latency = summary["latency"]
    assert latency["saturated"].startswith("saturated at ") and latency["achieved_hz"] < 0.95e6
    assert latency["p50_ms"] is None and latency["p99_ms"] is None


@pytest.mark.slow
def test_tof_end_to_end_accounts_for_every_shot_and_names_its_bounds() -> None:
    from benchmarks import tof_e2e

    argv = ["--rounds", "1", "--shots", "256", "--batch", "32", "--channels", "1", "--samples", "10000"]
    summary = tof_e2e.main([*argv, "--workers", "1", "--seconds", "1", "--distinct", "16", "--json"])
    rates = summary["shots_per_s"]
    assert all(rates[name] > 0 for name in ("generator", "raw_zmq", "e2e")), rates
    _check_ratios(summary["ratios"], set(rates), rounds=1)
    for paced in summary["paced"]:  # every shot analysed once, whatever the rate
        assert paced["analysed"] == paced["sent"] > 0 and paced["cores_per_100khz"] > 0, paced
    kept = [p["asked_hz"] for p in summary["paced"] if p["kept_up"]]
    assert summary["highest_rate_kept_up_hz"] == (max(kept) if kept else None)


def test_an_unknown_buffer_peer_is_refused_by_name() -> None:
    from benchmarks._buffer_peers import peer_cases

    with pytest.raises(SystemExit, match="unknown peer 'kafka'"):
        peer_cases({"kafka": "/opt/kafka"}, 1.0)
    assert [name for name, _, _ in peer_cases({"fastcache": "/nowhere"}, 1.0)] == [
        "relay_raw",
        "relay_buffer",
        "fastcache",
    ]
