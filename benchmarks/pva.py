"""pvAccess NTNDArray intake: photonstream's ``pva`` source → buffer → consumer vs ``pvapy-hpc-consumer``.

Both read the same PV: ``pvapy-ad-sim-server`` publishing ``--nx``×``--ny`` uint16 frames at ``--fps`` for
``--seconds`` on loopback (a fresh server per case, own ports and channel). photonstream: a pipeline process
(``pva`` source, msgpack, ``buffer`` handler) into a buffer service in this process and a decoding consumer
(``photonstream.client.subscribe``) here; frames/s is frames the consumer received over first-to-last arrival,
missed = the source's ``source_dropped`` + ``queue_overflow``. pvapy: ``pvapy-hpc-consumer`` with no processor,
its own ``nProcessed / receivingTime`` and ``nMissed`` (uniqueId gaps). Neither counts frames published before it
connected. Both ask the server for the same monitor queue (``--server-queue-size``, pvRequest
``record[queueSize=N]``): it absorbs the moments a client's receiving thread waits for the GIL. Rounds interleave
the two cases (order alternating); the ratio is the median of per-round ratios. The pvapy consumer only receives;
photonstream also serializes, stores in the buffer and delivers to a consumer.

    python -m benchmarks.pva [--rounds 3] [--seconds 5] [--fps 1000] [--nx 512] [--ny 512] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from photonstream.buffer import BufferService, BufferSettings
from photonstream.client import subscribe
from photonstream.frames import EndMessage, Frame

REPO = Path(__file__).resolve().parents[1]
PHOTONSTREAM = "photonstream pva → buffer → consumer"
PVAPY = "pvapy-hpc-consumer"

PIPELINE = r"""
import json, sys
from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import run_pipeline
end = run_pipeline(validate_pipeline(json.loads(sys.argv[1])))
print(json.dumps({"reason": end.reason, "error": end.error, "counts": end.counts}))
"""


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tool(name: str) -> str:
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install 'photonstream[pva]'")
    return found


class SimServer:
    """``pvapy-ad-sim-server`` on loopback with its own UDP search and TCP ports."""

    def __init__(self, args: argparse.Namespace) -> None:
        udp, tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        self.channel = f"photonstream:bench:{uuid.uuid4().hex[:8]}"
        self.client_env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        self.client_env.update(EPICS_PVA_ADDR_LIST=f"127.0.0.1:{udp}", EPICS_PVA_AUTO_ADDR_LIST="NO")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(
            EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1", EPICS_PVAS_BEACON_ADDR_LIST="127.0.0.1",
            EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO", EPICS_PVA_ADDR_LIST="127.0.0.1", EPICS_PVA_AUTO_ADDR_LIST="NO",
            EPICS_PVAS_BROADCAST_PORT=str(udp), EPICS_PVA_BROADCAST_PORT=str(udp),
            EPICS_PVAS_SERVER_PORT=str(tcp), EPICS_PVA_SERVER_PORT=str(tcp),
        )  # fmt: skip
        command = [_tool("pvapy-ad-sim-server"), "-cn", self.channel, "-nx", str(args.nx), "-ny", str(args.ny),
                   "-dt", "uint16", "-fps", str(args.fps), "-rt", str(args.seconds), "-std", str(args.start_delay),
                   "-shd", "0", "-nf", "20", "-rp", "0", "-dc"]  # fmt: skip
        self.proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.address = f"127.0.0.1:{udp}"

    def published(self) -> int:
        """Frames the server says it published (after it exited)."""
        out, _ = self.proc.communicate(timeout=60)
        found = re.findall(r"Published frames:\s+(\d+)", out)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def run_photonstream(args: argparse.Namespace, buffer: BufferService, stream_id: str) -> dict[str, Any]:
    server = SimServer(args)
    try:
        config = {
            "stream": {"experiment": "bench", "run": 1, "stream_id": stream_id},
            "source": {"type": "pva", "channel": server.channel, "address_list": server.address,
                       "start_timeout_s": 60, "idle_timeout_s": 2, "server_queue_size": args.server_queue_size},
            "handlers": [{"type": "buffer", "address": buffer.endpoint}],
        }  # fmt: skip
        arrivals: list[float] = []
        ends: list[EndMessage] = []

        def consume() -> None:
            for message in subscribe(buffer.endpoint, f"bench/1/{stream_id}", timeout_s=120):
                if isinstance(message, Frame):
                    message.array("data")
                    arrivals.append(time.perf_counter())
                elif isinstance(message, EndMessage):
                    ends.append(message)

        consumer = threading.Thread(target=consume, daemon=True)
        consumer.start()
        pipeline = subprocess.run(
            [sys.executable, "-c", PIPELINE, json.dumps(config)], cwd=REPO, env=server.client_env,
            capture_output=True, text=True, timeout=args.seconds + 180,
        )  # fmt: skip
        consumer.join(60)
        if pipeline.returncode != 0:
            raise SystemExit(f"pipeline failed: {pipeline.stderr[-2000:]}")
        outcome = json.loads(pipeline.stdout.splitlines()[-1])
        counts = outcome["counts"]
        span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
        return {
            "frames": len(arrivals),
            "frames_per_s": (len(arrivals) - 1) / span if len(arrivals) > 1 else float("nan"),
            "missed": int(counts.get("source_dropped", 0)) + int(counts.get("queue_overflow", 0)),
            "published": server.published(),
            "error": outcome["error"],
        }
    finally:
        server.stop()


def run_pvapy(args: argparse.Namespace) -> dict[str, Any]:
    server = SimServer(args)
    try:
        runtime = args.seconds + args.start_delay + 3
        command = [_tool("pvapy-hpc-consumer"), "-ic", server.channel, "-rt", str(runtime), "-rp", "1", "-dc",
                   "-sqs", str(args.server_queue_size)]  # fmt: skip
        out = subprocess.run(command, env=server.client_env, capture_output=True, text=True, timeout=runtime + 60)
        text = out.stdout + out.stderr

        def last(field: str) -> float:
            found = re.findall(rf"'{field}': ([\d.]+)", text)
            return float(found[-1]) if found else float("nan")

        processed, receiving = last("nProcessed"), last("receivingTime")
        return {
            "frames": int(processed) if processed == processed else 0,
            "frames_per_s": processed / receiving if receiving and receiving == receiving else float("nan"),
            "missed": int(last("nMissed")) if last("nMissed") == last("nMissed") else -1,
            "published": server.published(),
            "error": "" if processed == processed else f"no statistics from pvapy-hpc-consumer: {text[-300:]}",
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pva", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the server publishes per case")
    parser.add_argument("--fps", type=float, default=1000.0, help="the server's frame rate")
    parser.add_argument("--nx", type=int, default=512)
    parser.add_argument("--ny", type=int, default=512)
    parser.add_argument(
        "--server-queue-size", type=int, default=100, help="monitor queue on the server, for both (record[queueSize])"
    )
    parser.add_argument("--start-delay", type=float, default=2.0, help="seconds before the server publishes")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    settings = BufferSettings(bind="tcp://127.0.0.1:*", retention_bytes=512 * 1024 * 1024)
    buffer = BufferService(settings)
    buffer.start()
    rows: list[dict[str, Any]] = []
    results: dict[str, list[dict[str, Any]]] = {PHOTONSTREAM: [], PVAPY: []}
    try:
        for r in range(args.rounds):
            order = [PHOTONSTREAM, PVAPY] if r % 2 == 0 else [PVAPY, PHOTONSTREAM]
            for case in order:
                result = run_photonstream(args, buffer, f"r{r}") if case == PHOTONSTREAM else run_pvapy(args)
                results[case].append(result)
                rows.append({"case": case, "round": r + 1, "published": result["published"],
                             "frames": result["frames"], "frames/s": result["frames_per_s"],
                             "missed": result["missed"]})  # fmt: skip
    finally:
        buffer.stop()
    ratios = [
        p["frames_per_s"] / h["frames_per_s"]
        for p, h in zip(results[PHOTONSTREAM], results[PVAPY], strict=True)
        if h["frames_per_s"] > 0
    ]
    for case, runs in results.items():
        rows.append({"case": f"{case} (median)", "round": "–",
                     "published": statistics.median(r["published"] for r in runs),
                     "frames": statistics.median(r["frames"] for r in runs),
                     "frames/s": statistics.median(r["frames_per_s"] for r in runs),
                     "missed": statistics.median(r["missed"] for r in runs)})  # fmt: skip
    load_after = os.getloadavg()
    summary = {
        "bench": "pva",
        "machine": machine(),
        "seconds": args.seconds,
        "fps": args.fps,
        "shape": [args.ny, args.nx],
        "rounds": args.rounds,
        "server_queue_size": args.server_queue_size,
        "photonstream_median_fps": round(statistics.median(r["frames_per_s"] for r in results[PHOTONSTREAM]), 1),
        "pvapy_median_fps": round(statistics.median(r["frames_per_s"] for r in results[PVAPY]), 1),
        "photonstream_missed": [r["missed"] for r in results[PHOTONSTREAM]],
        "pvapy_missed": [r["missed"] for r in results[PVAPY]],
        "median_ratio_photonstream_over_pvapy": round(statistics.median(ratios), 3) if ratios else None,
        "errors": [r["error"] for runs in results.values() for r in runs if r["error"]],
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    if not args.json:
        print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
              f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f} ({os.cpu_count()} CPUs)")  # fmt: skip
    title = f"pvAccess intake: {args.nx}×{args.ny} uint16 at {args.fps:g} Hz for {args.seconds:g} s, loopback"
    report(title, rows, summary, args.json)
    return summary


if __name__ == "__main__":
    main()
