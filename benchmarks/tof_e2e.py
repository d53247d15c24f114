"""``photonstream bench e2e --tof``: time-of-flight shots end to end at the highest rate this machine keeps up with.

The workload: ``synthetic-tof`` shots of ``--channels`` × ``--samples`` int16 samples (4 × 10,000 by default, as a
multi-channel digitizer), ``batch`` of ``--batch`` shots per message, msgpack, the ``buffer`` handler into a buffer
service, and ``--workers`` TOF worker processes (``photonstream tof``, one lossless group sharing the shots:
baseline, CFD hit finding, m/q histograms). Cases, each in ``--rounds`` interleaved rounds:

- generator alone: the same pipeline into the ``null`` handler (what producing the shots costs: a bound). The
  source cycles through ``--distinct`` records made once (``distinct_shots``), as a digitizer's data would arrive;
  ``--distinct 0`` simulates every shot, which on its own runs at only ~650 shots/s per core;
- raw ZeroMQ: PUSH → PULL of messages of the same size, from another process (the transport's bound);
- end to end, as fast as it goes: shots analysed / (pipeline start → last worker done); every shot must be
  analysed exactly once (the workers' counts add up to the shots sent);
- end to end, paced at fractions of that rate: a rate "keeps up" when the pipeline reached ≥ 95 % of it, every
  shot was analysed, and the workers finished within ``DRAIN_S`` of the pipeline's end. The highest such rate is
  reported, with the cores it took per 100 kHz (CPU seconds of the pipeline, the workers and the buffer per shot).

    python -m benchmarks.tof_e2e [--workers 2] [--seconds 4] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from benchmarks._rounds import load_average, median, ratio

REPO = Path(__file__).resolve().parents[1]
DRAIN_S = 2.0
KEEP_UP = 0.95
FRACTIONS = (0.5, 0.7, 0.9)
PIPELINE = r"""
import json, sys, time
from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import run_pipeline
began = time.perf_counter()
end = run_pipeline(validate_pipeline(json.loads(sys.argv[1])))
print(json.dumps({"reason": end.reason, "error": end.error, "sent": end.events_sent, "began": began,
                  "ended": time.perf_counter()}))
"""


SENDER = r"""
import sys, zmq
context = zmq.Context()
push = context.socket(zmq.PUSH)
push.connect(sys.argv[1])
payload = bytes(int(sys.argv[3]))
for _ in range(int(sys.argv[2])):
    push.send(payload, copy=False)
push.close(linger=-1)
context.term()
"""


def _pipeline_config(args: argparse.Namespace, shots: int, rate_hz: float, handler: dict[str, Any], run: int) -> dict:
    source = {"type": "synthetic-tof", "events": shots, "channels": args.channels, "samples": args.samples,
              "rate_hz": rate_hz, "seed": run, "distinct_shots": args.distinct or None}  # fmt: skip
    return {
        "stream": {"experiment": "bench", "run": run, "stream_id": "tof"},
        "source": source,
        "steps": [{"type": "batch", "size": args.batch}],
        "serializer": {"type": "msgpack"},
        "handlers": [handler],
    }


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_of_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def generator_rate(args: argparse.Namespace, shots: int) -> float:
    config = _pipeline_config(args, shots, 0.0, {"type": "null"}, 1)
    done = subprocess.run([sys.executable, "-c", PIPELINE, json.dumps(config)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, check=True)  # fmt: skip
    outcome = json.loads(done.stdout.splitlines()[-1])
    return outcome["sent"] / (outcome["ended"] - outcome["began"])


def raw_zmq_rate(args: argparse.Namespace, shots: int) -> float:
    """Shots/s of PUSH → PULL with messages of one batch's size (msgpack framing aside), another process sending."""
    import zmq

    messages = max(1, shots // args.batch)
    size = args.batch * args.channels * args.samples * 2
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    sender = subprocess.Popen([sys.executable, "-c", SENDER, f"tcp://127.0.0.1:{port}", str(messages), str(size)])
    try:
        pull.recv()
        began = time.perf_counter()
        for _ in range(messages - 1):
            pull.recv(copy=False)
        seconds = time.perf_counter() - began
    finally:
        sender.wait(60)
        pull.close(linger=0)
        context.term()
    return (messages - 1) * args.batch / seconds if messages > 1 else 0.0


def end_to_end(args: argparse.Namespace, buffer: Any, shots: int, rate_hz: float, run: int) -> dict[str, Any]:
    stream = f"bench/{run}/tof"
    cpu_children, cpu_self = _cpu_of_children(), _cpu_of_self()
    workers = [
        subprocess.Popen([sys.executable, "-m", "photonstream", "tof", buffer.endpoint, stream, "--group", "tof",
                          "--worker-id", f"w{i}", "--batch-size", str(args.batch), "--no-publish",
                          "--timeout-s", "120"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(args.workers)
    ]  # fmt: skip
    config = _pipeline_config(args, shots, rate_hz, {"type": "buffer", "address": buffer.endpoint}, run)
    pipeline = subprocess.run([sys.executable, "-c", PIPELINE, json.dumps(config)], cwd=REPO, capture_output=True,
                              text=True, timeout=900)  # fmt: skip
    if pipeline.returncode != 0:
        for worker in workers:
            worker.kill()
        raise RuntimeError(f"pipeline failed: {pipeline.stderr[-1500:]}")
    outcome = json.loads(pipeline.stdout.splitlines()[-1])
    summaries = []
    for worker in workers:
        out, err = worker.communicate(timeout=300)
        if worker.returncode != 0:
            raise RuntimeError(f"worker failed: {err[-1500:]}")
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    done_at = time.perf_counter()
    analysed = sum(s["events"] for s in summaries)
    cpu = (_cpu_of_children() - cpu_children) + (_cpu_of_self() - cpu_self)  # the buffer runs in this process
    sending_s = outcome["ended"] - outcome["began"]
    return {
        "asked_hz": rate_hz,
        "sent": outcome["sent"],
        "analysed": analysed,
        "pipeline_hz": outcome["sent"] / sending_s,
        "shots_per_s": analysed / (done_at - outcome["began"]),
        "drain_s": done_at - outcome["ended"],
        "cores_per_100khz": cpu / max(analysed, 1) * 100_000,
    }


def kept_up(result: dict[str, Any]) -> bool:
    return (
        result["analysed"] == result["sent"]
        and result["pipeline_hz"] >= KEEP_UP * result["asked_hz"]
        and result["drain_s"] <= DRAIN_S
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="photonstream bench e2e --tof", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=64, help="shots per message (and per analysis batch)")
    parser.add_argument("--seconds", type=float, default=4.0, help="about how long each paced case sends")
    parser.add_argument("--shots", type=int, default=4096, help="shots of the unpaced cases")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--distinct",
        type=int,
        default=256,
        help="distinct records the source cycles through (0: every shot generated: the generator bounds)",
    )
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)

    from photonstream.buffer import BufferService, BufferSettings

    load_before = load_average()
    buffer = BufferService(BufferSettings(bind="tcp://127.0.0.1:*", retention_bytes=512 << 20))
    buffer.start()
    samples: dict[str, list[float | None]] = {"generator": [], "raw_zmq": [], "e2e": []}
    e2e_runs: list[dict[str, Any]] = []
    paced: list[dict[str, Any]] = []
    run = 0
    try:
        for _ in range(args.rounds):
            samples["generator"].append(generator_rate(args, args.shots))
            samples["raw_zmq"].append(raw_zmq_rate(args, args.shots))
            run += 1
            e2e_runs.append(end_to_end(args, buffer, args.shots, 0.0, run))
            samples["e2e"].append(e2e_runs[-1]["shots_per_s"])
        top = median(samples["e2e"]) or 0.0
        for fraction in FRACTIONS:
            rate = round(top * fraction, -1)
            run += 1
            result = end_to_end(args, buffer, max(args.batch, int(rate * args.seconds)), rate, run)
            paced.append({**result, "fraction": fraction, "kept_up": kept_up(result)})
    finally:
        buffer.stop()
    kept = [p for p in paced if p["kept_up"]]
    best = max(kept, key=lambda p: p["asked_hz"]) if kept else None
    shot_bytes = args.channels * args.samples * 2
    summary: dict[str, Any] = {
        "shots_per_s": {name: None if median(v) is None else round(median(v), 1) for name, v in samples.items()},
        "ratios": {name: ratio(samples, "e2e", name) for name in ("generator", "raw_zmq")},
        "highest_rate_kept_up_hz": None if best is None else best["asked_hz"],
        "cores_per_100khz": None if best is None else round(best["cores_per_100khz"], 2),
        "paced": [{k: round(v, 3) if isinstance(v, float) else v for k, v in p.items()} for p in paced],
        "workers": args.workers, "channels": args.channels, "samples": args.samples, "batch": args.batch,
        "rounds": args.rounds, "load_average": {"before": load_before, "after": load_average()},
        "machine": machine(),
    }  # fmt: skip
    rows = [
        {
            "case": name,
            "shots/s (median)": median(v) or float("nan"),
            "MB/s": (median(v) or float("nan")) * shot_bytes / 1e6,
            "note": "",
        }
        for name, v in samples.items()
    ]
    rows += [{"case": f"paced {p['asked_hz']:,.0f} Hz", "shots/s (median)": p["shots_per_s"],
              "MB/s": p["shots_per_s"] * shot_bytes / 1e6,
              "note": ("kept up" if p["kept_up"] else "fell behind") + f", drain {p['drain_s']:.2f} s, "
              f"{p['cores_per_100khz']:.2f} cores/100 kHz"} for p in paced]  # fmt: skip
    title = (
        f"TOF end to end: {args.channels} x {args.samples} int16 shots, batches of {args.batch}, "
        f"{args.workers} workers ({args.rounds} interleaved rounds; load {load_before} → {load_average()})"
    )
    report(title, rows, summary, args.json)
    return summary


if __name__ == "__main__":
    main()
