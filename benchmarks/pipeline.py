"""``photonstream bench pipeline``: frames/s of whole pipelines, each beside its own bounds, in the same run.

The workload (as LCLStream's): ``events`` events of 512 × 1024 float32 XTC2 read by psana, HDF5 uncompressed, one
event per message, zmq-push to a PULL reader in another process. Cases, interleaved over ``rounds`` rounds:

- source alone: psana reads the events, nothing else (the read bound);
- serializer alone: HDF5-encoding the same frames (held in memory) one by one (the encode bound);
- raw ZeroMQ: PUSH of the same encoded bytes to the same PULL reader (the transport bound);
- pipeline: psana → hdf5 → zmq-push → PULL, and the same with msgpack;
- synthetic epix10k2m → msgpack → null and → hdf5+bslz4 → null (no psana needed);
- a peer, when ``--peer NAME=COMMAND`` names one: COMMAND (a shell command; ``{xtc2}``, ``{events}`` and
  ``{endpoint}`` are filled in) must send the run to ``{endpoint}`` (we bind a PULL there); its frames/s is what
  our reader counts from its first to its last message (the stream ends at a message holding ``--peer-end``, or
  3 s after the last one).

Every ratio is the median over rounds of the two cases' figures within the same round (min, max and the
denominator's name beside it); the pipeline's ``bound`` is the slowest of its three stages. The load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from benchmarks._rounds import interleave, load_average, median, ratio
from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import Pipeline
from photonstream.transport.ports import free_tcp_port

SHAPE = (512, 1024)
HELD_FRAMES = 20  # frames kept in memory for the serializer and raw cases (cycled through)


def _run(config: dict[str, Any]) -> tuple[float, int]:
    pipeline = Pipeline(validate_pipeline(config))
    started = time.perf_counter()
    end = pipeline.run()
    return time.perf_counter() - started, end.events_sent


def synthetic_rate(serializer: dict[str, Any], events: int) -> float:
    source = {"type": "synthetic-diffraction", "detector": "epix10k2m", "events": events, "seed": 1}
    seconds, sent = _run({"source": source, "serializer": serializer, "handlers": [{"type": "null"}]})
    return sent / seconds


def _reader(endpoint: str, bind: bool = False, end_marker: str | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "benchmarks._pull_counter", endpoint]
    command += ["--bind"] if bind else []
    command += ["--end-marker", end_marker] if end_marker else (["--idle-end", "3"] if bind else [])
    reader = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    if "ready" not in reader.stdout.readline():  # the sender starts only once the reader listens
        reader.kill()
        raise RuntimeError("the reader did not start")
    return reader


def _counted(reader: subprocess.Popen[str]) -> float:
    out, _ = reader.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    if "error" in result:
        raise RuntimeError(f"reader: {result['error']} after {result['messages']} messages")
    return result["messages"] / result["seconds"] if result["seconds"] > 0 else 0.0


def pipeline_rate(xtc2: Path, serializer: dict[str, Any]) -> float:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    reader = _reader(endpoint)
    source = {"type": "psana", "files": [str(xtc2)], "detector": "fakecam"}
    _run(
        {"source": source, "serializer": serializer, "handlers": [{"type": "zmq-push", "address": endpoint, "hwm": 50}]}
    )
    return _counted(reader)


def source_rate(xtc2: Path) -> float:
    from photonstream.sources.base import registry

    source = registry.create(registry.get("psana").Options(files=[str(xtc2)], detector="fakecam"))
    source.open()
    started, count = time.perf_counter(), 0
    try:
        for _ in source.events():
            count += 1
    finally:
        source.close()
    return count / (time.perf_counter() - started)


class HeldFrames:
    """A few events of the run in memory, encoded once for the raw case; the serializer case re-encodes them."""

    def __init__(self, xtc2: Path) -> None:
        from photonstream.frames import EndMessage, StartMessage
        from photonstream.serializers.base import create
        from photonstream.sources.base import registry

        options = registry.get("psana").Options(files=[str(xtc2)], detector="fakecam", copy_arrays=True)
        source = registry.create(options)
        info = source.open()
        self.frames = []
        for frame in source.events():
            self.frames.append(frame)
            if len(self.frames) == HELD_FRAMES:
                break
        source.close()
        self.serializer = create("hdf5")
        self.encoded = [self.serializer.encode(frame) for frame in self.frames]
        self.start = self.serializer.encode(StartMessage(stream_id="bench", detector=info.detector))
        self.end = self.serializer.encode(EndMessage(stream_id="bench"))

    def serializer_rate(self, events: int) -> float:
        started = time.perf_counter()
        for i in range(events):
            self.serializer.encode(self.frames[i % len(self.frames)])
        return events / (time.perf_counter() - started)

    def raw_zmq_rate(self, events: int) -> float:
        import zmq

        endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
        reader = _reader(endpoint)
        context = zmq.Context()
        socket = context.socket(zmq.PUSH)
        socket.setsockopt(zmq.SNDHWM, 50)
        socket.bind(endpoint)
        try:
            socket.send_multipart(self.start)
            for i in range(events):
                socket.send_multipart(self.encoded[i % len(self.encoded)], copy=False)
            socket.send_multipart(self.end)
            return _counted(reader)
        finally:
            socket.close(linger=10_000)
            context.term()


def peer_rate(command: str, xtc2: Path, events: int, end_marker: str | None) -> float:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    reader = _reader(endpoint, bind=True, end_marker=end_marker)
    filled = command.format(xtc2=shlex.quote(str(xtc2)), events=events, endpoint=endpoint)
    done = subprocess.run(
        filled, shell=True, capture_output=True, text=True, timeout=600
    )  # the user's own command line
    if done.returncode != 0:
        reader.kill()
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}")
    return _counted(reader)


def main(
    events: int = 300,
    rounds: int = 5,
    json_only: bool = False,
    peers: dict[str, str] | None = None,
    peer_end: str | None = None,
) -> dict[str, Any]:
    errors: dict[str, str] = {}
    load_before = load_average()
    cases: dict[str, Any] = {
        "synthetic_msgpack": lambda: synthetic_rate({"type": "msgpack"}, events),
        "synthetic_hdf5_bslz4": lambda: synthetic_rate({"type": "hdf5", "compression": "bslz4"}, events),
    }
    labels = {
        "synthetic_msgpack": "synthetic epix10k2m → msgpack → null",
        "synthetic_hdf5_bslz4": "synthetic epix10k2m → hdf5+bslz4 → null",
        "source": "psana XTC2 read alone (bound)",
        "serializer": "hdf5 encode alone (bound)",
        "raw_zmq": "raw PUSH → PULL of the same bytes (bound)",
        "pipeline_hdf5": "psana XTC2 → hdf5 → zmq-push → PULL",
        "pipeline_msgpack": "psana XTC2 → msgpack → zmq-push → PULL",
    }
    with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as tmp:
        xtc2 = Path(tmp) / "fakecam.xtc2"
        try:
            import numpy as np

            from photonstream.testing.xtc2 import write_xtc2_run

            write_xtc2_run(xtc2, events=events, shape=SHAPE, dtype=np.float32, layout="fakecam")
            held = HeldFrames(xtc2)
            cases |= {
                "source": lambda: source_rate(xtc2),
                "serializer": lambda: held.serializer_rate(events),
                "raw_zmq": lambda: held.raw_zmq_rate(events),
                "pipeline_hdf5": lambda: pipeline_rate(xtc2, {"type": "hdf5"}),
                "pipeline_msgpack": lambda: pipeline_rate(xtc2, {"type": "msgpack"}),
            }
            for name, command in (peers or {}).items():
                cases[f"peer_{name}"] = lambda command=command: peer_rate(command, xtc2, events, peer_end)
                labels[f"peer_{name}"] = f"peer {name} (same workload)"
        except ImportError as exc:
            errors["xtc2"] = f"psana not installed ({exc})"
        for case in cases.values():  # warm-up: imports, page cache
            case()
        samples = interleave(
            cases, rounds, on_error=lambda name, exc: errors.setdefault(name, f"{type(exc).__name__}: {exc}")
        )
    summary: dict[str, Any] = {"events": events, "rounds": rounds, "frames_per_s": {}, "ratios": {}}
    for name, values in samples.items():
        summary["frames_per_s"][name] = None if median(values) is None else round(median(values), 1)
    pairs = [("pipeline_hdf5", "source"), ("pipeline_hdf5", "serializer"), ("pipeline_hdf5", "raw_zmq")]
    pairs += [(f"peer_{name}", "pipeline_hdf5") for name in peers or {}]
    pairs += [("pipeline_hdf5", f"peer_{name}") for name in peers or {}]
    for numerator, denominator in pairs:
        found = ratio(samples, numerator, denominator)
        if found is not None:
            summary["ratios"][f"{numerator}_vs_{denominator}"] = found
    if "pipeline_hdf5" in samples:
        stages = [[samples[s][r] for s in ("source", "serializer", "raw_zmq")] for r in range(rounds)]
        bounds = [min((v for v in figures if v), default=None) for figures in stages]  # a failed stage: no bound
        summary["ratios"]["pipeline_hdf5_vs_bound"] = ratio({**samples, "bound": bounds}, "pipeline_hdf5", "bound")
    summary["load_average"] = {"before": load_before, "after": load_average()}
    summary["errors"] = errors
    summary["machine"] = machine()
    rows = []
    for name, values in samples.items():
        known = [v for v in values if v is not None]
        rows.append({
            "case": labels.get(name, name), "frames/s (median)": median(values) or float("nan"),
            "min": min(known) if known else float("nan"), "max": max(known) if known else float("nan"),
            "MB/s": (median(values) or float("nan")) * SHAPE[0] * SHAPE[1] * 4 / 1e6 if "synthetic" not in name
            else (median(values) or float("nan")) * 16 * 352 * 384 * 2 / 1e6,
            "note": errors.get(name, ""),
        })  # fmt: skip
    title = f"pipeline ({events} events, {rounds} interleaved rounds; load {load_before} → {load_average()})"
    report(title, rows, summary, json_only)
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="photonstream bench pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians of per-round ratios)")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=COMMAND", help="a peer to run alongside")
    parser.add_argument("--peer-end", default=None, help="bytes that mark the peer's last message (its own format)")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    peers = dict(p.split("=", 1) for p in args.peer if "=" in p)
    return main(args.events, args.rounds, args.json, peers, args.peer_end)


if __name__ == "__main__":
    cli()
