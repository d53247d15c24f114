"""Relay rate of lclstream/fastcache vs raw PUSH → PULL, same bytes, interleaved rounds, medians.

    .venv/bin/python benchmarks/peers/fastcache_relay_bench.py BUILD_DIR [--seconds 5] [--rounds 3]
        [--size 2097152] [--types 4,1] [--framing]

Per round, in order: raw (a PUSH in a producer process connects to our PULL, which binds), then for each
fastcache type: producer PUSH → (connect) fastcache IN (PULL, bound) → fastcache OUT (PUSH, bound) → (connect)
our PULL. The producer sends the same SIZE-byte buffer (zero-copy) as fast as the socket takes it; the consumer
counts messages for SECONDS from its first message. --framing also sends a 3-part multipart message and a
1-byte message through fastcache and prints what arrives. Prints one JSON line per case and a summary table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import time
from pathlib import Path

import zmq

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def producer(endpoint: str, size: int, stop, hwm: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, hwm)
    push.setsockopt(zmq.SNDTIMEO, 100)
    push.connect(endpoint)
    payload = os.urandom(size)
    frame = zmq.Frame(payload)
    while not stop.is_set():
        with contextlib.suppress(zmq.Again):
            push.send(frame, copy=False)
    push.close(linger=0)
    ctx.term()


def consume(pull: zmq.Socket, seconds: float, size: int) -> dict:
    if not pull.poll(20_000):
        return {"error": "no message in 20 s"}
    parts = pull.recv_multipart(copy=False)
    first = time.perf_counter()
    count, nbytes, bad = 0, 0, 0
    end = first + seconds
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if not pull.poll(max(1, int((end - now) * 1000))):
            break
        parts = pull.recv_multipart(copy=False)
        count += 1
        n = sum(len(p.buffer) for p in parts)
        nbytes += n
        bad += len(parts) != 1 or n != size
    elapsed = time.perf_counter() - first
    return {
        "messages": count,
        "seconds": elapsed,
        "msg_per_s": count / elapsed,
        "GB_per_s": nbytes / elapsed / 1e9,
        "bad": bad,
    }


def run_case(kind: str, build_dir: str, size: int, seconds: float, hwm: int) -> dict:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, hwm)
    relay = None
    if kind == "raw":
        ep = f"tcp://127.0.0.1:{free_port()}"
        pull.bind(ep)
        target = ep
    else:
        fc_type = kind.split("_")[1]
        ep_in, ep_out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
        env = dict(os.environ, FASTCACHE_TYPE=fc_type)
        relay = subprocess.Popen(
            [str(HERE / "fastcache.sh"), build_dir, ep_in, ep_out],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)
        pull.connect(ep_out)
        target = ep_in
    stop = mp.Event()
    proc = mp.Process(target=producer, args=(target, size, stop, hwm))
    proc.start()
    try:
        result = consume(pull, seconds, size)
    finally:
        stop.set()
        proc.join(10)
        if relay is not None:
            relay.terminate()
            relay.wait(10)
        pull.close(linger=0)
        ctx.term()
    return {"case": kind, **result}


def framing(build_dir: str) -> None:
    ctx = zmq.Context()
    ep_in, ep_out = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    relay = subprocess.Popen(
        [str(HERE / "fastcache.sh"), build_dir, ep_in, ep_out], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    time.sleep(0.3)
    pull = ctx.socket(zmq.PULL)
    pull.connect(ep_out)
    push = ctx.socket(zmq.PUSH)
    push.connect(ep_in)
    time.sleep(0.3)
    push.send_multipart([b"header", b"part-1", b"part-2"])
    push.send(b"x")
    got = []
    while pull.poll(1000):
        got.append(pull.recv_multipart())
    received = [[p.decode() for p in m] for m in got]
    print(json.dumps({"framing": "sent [header, part-1, part-2] then [x]", "received": received}))
    relay.terminate()
    relay.wait(10)
    push.close(0)
    pull.close(0)
    ctx.term()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("build_dir")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--types", default="4", help="fastcache types to run, comma-separated (4 = default)")
    ap.add_argument("--hwm", type=int, default=10, help="our sockets' HWM (fastcache's is FASTCACHE_HWM, 10)")
    ap.add_argument("--framing", action="store_true")
    args = ap.parse_args()
    if args.framing:
        framing(args.build_dir)
    cases = ["raw"] + [f"fastcache_{t}" for t in args.types.split(",") if t]
    load_before = os.getloadavg()
    samples: dict[str, list[dict]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for c in cases:
            res = run_case(c, args.build_dir, args.size, args.seconds, args.hwm)
            res.update(round=r, load=os.getloadavg()[0])
            print(json.dumps(res), flush=True)
            samples[c].append(res)
    load_after = os.getloadavg()
    loads = f"{tuple(round(x, 2) for x in load_before)} -> {tuple(round(x, 2) for x in load_after)}"
    print(
        f"\n{args.size} B messages, {args.seconds} s per case, {args.rounds} interleaved rounds; "
        f"load {loads}; nproc {os.cpu_count()}"
    )
    print(f"{'case':<14}{'msg/s median':>14}{'GB/s median':>13}{'min msg/s':>11}{'max msg/s':>11}{'vs raw':>8}")
    for c in cases:
        vals = [s["msg_per_s"] for s in samples[c] if "msg_per_s" in s]
        gbs = [s["GB_per_s"] for s in samples[c] if "GB_per_s" in s]
        if not vals:
            print(f"{c:<14} failed: {samples[c]}")
            continue
        per_round = [s["msg_per_s"] / raw["msg_per_s"] for s, raw in zip(samples[c], samples["raw"], strict=True)]
        print(
            f"{c:<14}{statistics.median(vals):>14.1f}{statistics.median(gbs):>13.2f}{min(vals):>11.1f}"
            f"{max(vals):>11.1f}{statistics.median(per_round):>8.2f}"
        )


if __name__ == "__main__":
    main()
