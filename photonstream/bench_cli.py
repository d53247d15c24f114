"""``photonstream bench ...``: the benchmarks' entry points (a table for people, one JSON object on the last line).

The benchmarks live in ``benchmarks/``; each command imports its module only when run.
"""

from __future__ import annotations

import sys

import typer

from photonstream.cli_support import err_console, friendly

bench_app = typer.Typer(help="Benchmarks (table for people, one JSON object on the last line).", no_args_is_help=True)


def _peers(given: list[str], form: str) -> dict[str, str]:
    """``--peer`` values as {name: value}; a value without ``=`` is one clear error line (exit 2)."""
    bad = [p for p in given if "=" not in p]
    if bad:
        err_console.print(f"[bold red]error:[/] --peer must be {form}, not {bad[0]!r}")
        raise typer.Exit(2)
    return dict(p.split("=", 1) for p in given)


@bench_app.command("pipeline")
@friendly
def bench_pipeline(
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
    events: int = typer.Option(300, help="events per case"),
    rounds: int = typer.Option(5, min=1, help="interleaved rounds (medians of per-round ratios)"),
    peer: list[str] = typer.Option([], "--peer", help="NAME=COMMAND: a peer on the same workload (repeatable)"),
) -> None:
    """Frames/s of the pipeline beside its bounds (psana alone, HDF5 alone, raw ZeroMQ) and any --peer."""
    from benchmarks.pipeline import main as bench_main

    bench_main(events=events, rounds=rounds, json_only=as_json, peers=_peers(peer, "NAME=COMMAND"))


@bench_app.command("startup")
@friendly
def bench_startup(
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
    runs: int = typer.Option(5, min=1, help="jobs per backend (the median is reported)"),
) -> None:
    """Time from job submission to a running job, and from cancel to its processes being gone (local, Slurm)."""
    from benchmarks.startup import main as bench_main

    bench_main(runs=runs, json_only=as_json)


@bench_app.command("tof")
@friendly
def bench_tof(as_json: bool = typer.Option(False, "--json", help="only the JSON line")) -> None:
    """Time-of-flight analysis: traces/s and MB/s per core, and the cores 10 kHz × 10,000 samples needs."""
    from benchmarks.tof import main as bench_main

    bench_main(json_only=as_json)


@bench_app.command("structure")
@friendly
def bench_structure(
    rounds: int = typer.Option(3, "--rounds", min=1, help="interleaved rounds (medians are shown)"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
) -> None:
    """Merge and structure update times vs frames, last frame → final map, frames/s with 1, 2, 4 workers."""
    import os

    # A fresh interpreter: cctbx must be imported before scipy/hdf5plugin, which this process already loaded.
    arguments = ["--rounds", str(rounds), *(["--json"] if as_json else [])]
    os.execv(sys.executable, [sys.executable, "-m", "benchmarks.structure", *arguments])


@bench_app.command("buffer")
@friendly
def bench_buffer(
    frame_mb: float = typer.Option(4.0, help="frame size in MB for the ZeroMQ comparisons"),
    seconds: float = typer.Option(3.0, help="seconds per case"),
    rounds: int = typer.Option(3, min=1, help="interleaved rounds (medians of per-round ratios)"),
    rate_hz: float = typer.Option(1000.0, "--rate-hz", min=1.0, help="the paced latency case's rate"),
    peer: list[str] = typer.Option([], "--peer", help="fastcache=BUILD_DIR: LCLStream's relay beside the buffer"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
) -> None:
    """The buffer against raw ZeroMQ, libzmq's proxy, PUB/SUB, file writes, NATS JetStream and Redis Streams."""
    from benchmarks.buffer import main as bench_main

    peers = _peers(peer, "NAME=PATH")
    bench_main(frame_mb=frame_mb, seconds=seconds, json_only=as_json, rounds=rounds, rate_hz=rate_hz, peers=peers)


@bench_app.command("e2e")
@friendly
def bench_e2e(
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
    duration: float = typer.Option(20.0, min=1.0, help="seconds of acquisition per case"),
    rate: float = typer.Option(120.0, min=1.0, help="frames per second"),
    detectors: list[str] = typer.Option(["epix10k2m"], "--detector", help="detector per case (repeatable)"),
    tof: bool = typer.Option(False, "--tof", help="time-of-flight shots instead: the highest shot rate kept up"),
    workers: int = typer.Option(2, min=1, help="--tof: TOF worker processes"),
) -> None:
    """The whole system: request → first frame and → first indexed result, sustained frames/s, keeping up."""
    if tof:
        from benchmarks.tof_e2e import main as tof_main

        tof_main(["--workers", str(workers), *(["--json"] if as_json else [])])
        return
    from benchmarks.e2e import main as bench_main

    bench_main(json_only=as_json, duration_s=duration, rate_hz=rate, detectors=tuple(detectors))


@bench_app.command("wan")
@friendly
def bench_wan(
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
    frames: int = typer.Option(600, min=4, help="frames of 192 KiB per case"),
    delay_ms: float = typer.Option(25.0, "--delay-ms", min=0.0, help="the link's one-way delay, each direction (ms)"),
    rate_mbps: float = typer.Option(200.0, "--rate-mbps", min=0.001, help="the link's cap per direction (Mb/s)"),
    securities: list[str] = typer.Option(
        ["curve", "none"], "--security", help="buffer security per photonstream case: curve | none (repeatable)"
    ),
    credit: int = typer.Option(8, min=1, help="frames each worker may have in flight"),
) -> None:
    """Across a simulated WAN (two network namespaces, our relay): goodput and request → first frame / completed,
    with CURVE and without, against raw TCP over the same link. Needs root and iproute2."""
    from benchmarks.wan import main as bench_main

    unknown = [s for s in securities if s not in ("curve", "none")]
    if unknown:
        err_console.print(f"[bold red]error:[/] --security must be curve or none, not {unknown[0]!r}")
        raise typer.Exit(2)
    bench_main(
        json_only=as_json,
        frames=frames,
        delay_ms=delay_ms,
        rate_mbps=rate_mbps,
        securities=tuple(securities),
        credit=credit,
    )


@bench_app.command("pva")
@friendly
def bench_pva(
    rounds: int = typer.Option(3, min=1, help="interleaved rounds (median of per-round ratios)"),
    seconds: float = typer.Option(5.0, min=1.0, help="how long the server publishes per case"),
    fps: float = typer.Option(1000.0, min=1.0, help="the simulated areaDetector's frame rate"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line"),
) -> None:
    """EPICS pvAccess intake: the pva source → buffer → consumer vs pvapy-hpc-consumer on the same PV."""
    from benchmarks.pva import main as bench_main

    bench_main(
        ["--rounds", str(rounds), "--seconds", str(seconds), "--fps", str(fps), *(["--json"] if as_json else [])]
    )
