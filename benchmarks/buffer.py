"""``photonstream bench buffer``: the buffer's throughput and latency against ZeroMQ, NATS JetStream and Redis.

Every case runs producer, relay and consumers in separate processes on this machine, over loopback TCP, with
payloads of ``frame_mb`` megabytes (10^6 bytes) for ``seconds`` seconds; GB/s is 10^9 payload bytes per second
as received by one consumer (the first to the last message it got).

- raw_zmq: PUSH → PULL, one hop
- zmq_proxy: PUSH → ``zmq.proxy`` (libzmq's own, in C) → PULL
- buffer_mem / buffer_disk: the ``buffer`` handler → BufferService (memory / ``durable`` on disk) → subscribe()
- buffer_plain / buffer_auth / buffer_curve: the same in memory on a listener without authentication, with token
  authentication (ZAP PLAIN, data in clear), and with CURVE (authenticated and encrypted), side by side
- buffer_bcast4 vs zmq_pub4: the buffer to 4 groups (one consumer each) vs PUB to 4 SUBs (GB/s per consumer)
- nats / redis / buffer_1mb: always 1 MB frames: NATS JetStream (memory storage, async acked publish, ordered
  push consumer) at 127.0.0.1:4222, Redis Streams (pipelined XADD, XREAD) at 127.0.0.1:6379, our buffer
- latency: producer → buffer → consumer p50/p99 of 1 MB frames paced at ``--rate-hz``; when the machine
  delivers less than 95 % of that rate it says "saturated at N/s" instead (latencies would be queueing)
- disk_write: plain sequential writes of the same block size into a temporary file (durable's bound)
- size sweep: messages/s of the buffer in memory and of raw PUSH → PULL at 1 KiB, 16 KiB, 256 KiB and 4 MiB
- durable latency: p99 of a durable stream paced at 200 Hz (1 MB), without and with retention deleting 16 MiB
  segments as it goes (the deletion must not stall delivery)

``--peer fastcache=BUILD_DIR`` adds LCLStream's relay beside the buffer's at 2 MiB (benchmarks/_buffer_peers.py).

Cases run in ``--rounds`` interleaved rounds (every case once per round); figures are medians over rounds and
every ratio is the median over rounds of the two cases' figures in the same round, with min and max, naming
its numerator and denominator. The load average is printed before and after.

    python -m benchmarks.buffer [--frame-mb 4] [--seconds 3] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from benchmarks._buffer_hops import buffer_case, disk_write, nats_case, redis_case
from benchmarks._buffer_zmq import (
    CREDIT,
    MB,
    WINDOW,
    _ctx,
    _free_port,
    _run_processes,
    _zmq_receiver,
    _zmq_sender,
    raw_zmq,
    zmq_proxy,
    zmq_pub,
)
from benchmarks._report import machine, report
from benchmarks._rounds import load_average, median, ratio

__all__ = [
    "CREDIT",
    "WINDOW",
    "_ctx",
    "_free_port",
    "_run_processes",
    "_zmq_receiver",
    "_zmq_sender",
    "buffer_case",
    "cli",
    "main",
    "raw_zmq",
    "run",
]

# -- the whole run ---------------------------------------------------------------------------------------------
SATURATED_BELOW = 0.95  # a paced case that delivers less than this share of its asked rate is saturated
RATIOS = {  # name: (numerator, denominator), both cases of the same round
    "mem_vs_proxy": ("buffer_mem", "zmq_proxy"),
    "mem_vs_raw": ("buffer_mem", "raw_zmq"),
    "disk_vs_mem": ("buffer_disk", "buffer_mem"),
    "disk_vs_file_write": ("buffer_disk", "disk_write"),
    "auth_vs_plain": ("buffer_auth", "buffer_plain"),
    "curve_vs_plain": ("buffer_curve", "buffer_plain"),
    "bcast4_vs_pub4": ("buffer_bcast4", "zmq_pub4"),
    "vs_nats": ("buffer_1mb", "nats"),
    "vs_redis": ("buffer_1mb", "redis"),
}


DURABLE_HZ = 200.0  # the durable latency cases' pace (1 MB messages)
SEGMENT = 16 << 20  # segment size of the retention case: a segment deleted every ~0.1 s
SWEEP_BYTES = (1024, 16 * 1024, 256 * 1024, 4 * 1024 * 1024)


def _size_text(size: int) -> str:
    return f"{size // (1 << 20)} MiB" if size >= 1 << 20 else f"{size // 1024} KiB"


def _messages_per_s(result: dict[str, Any]) -> float | None:
    messages, seconds = result.get("messages"), result.get("seconds")
    return messages / seconds if isinstance(messages, int) and seconds else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def paced_verdict(result: dict[str, Any]) -> dict[str, Any]:
    """A paced case's latency, or "saturated at N/s" when the machine did not reach the asked rate (its
    latencies then measure queueing, not the hop)."""
    asked = result.get("rate_hz") or 0.0
    achieved = result["messages"] / result["seconds"] if result.get("seconds") else 0.0
    verdict = {"asked_hz": asked, "achieved_hz": round(achieved, 1)}
    if asked and achieved < SATURATED_BELOW * asked:
        return {**verdict, "saturated": f"saturated at {achieved:,.0f}/s", "p50_ms": None, "p99_ms": None}
    return {**verdict, "saturated": None, "p50_ms": result.get("p50_ms"), "p99_ms": result.get("p99_ms")}


def run(
    frame_mb: float = 4.0,
    seconds: float = 3.0,
    rounds: int = 3,
    only: tuple[str, ...] = (),
    rate_hz: float = 1000.0,
    peers: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    size = int(frame_mb * MB)
    one_mb = MB
    cases: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("raw_zmq", f"PUSH→PULL, {frame_mb:g} MB", lambda: raw_zmq(size, seconds)),
        ("zmq_proxy", f"PUSH→zmq.proxy→PULL, {frame_mb:g} MB", lambda: zmq_proxy(size, seconds)),
        ("buffer_mem", f"buffer in memory, {frame_mb:g} MB", lambda: buffer_case(size, seconds)),
        ("buffer_disk", f"buffer durable, {frame_mb:g} MB", lambda: buffer_case(size, seconds, durable=True)),
        ("disk_write", f"plain file writes, {frame_mb:g} MB blocks", lambda: disk_write(block=size)),
        ("buffer_plain", f"buffer, no authentication, {frame_mb:g} MB", lambda: buffer_case(size, seconds)),
        ("buffer_auth", f"buffer, token auth (plaintext), {frame_mb:g} MB",
         lambda: buffer_case(size, seconds, security="token")),
        ("buffer_curve", f"buffer, CURVE (encrypted), {frame_mb:g} MB",
         lambda: buffer_case(size, seconds, security="curve")),
        ("buffer_bcast4", f"buffer → 4 groups, {frame_mb:g} MB (per consumer)",
         lambda: buffer_case(size, seconds, groups=4)),
        ("zmq_pub4", f"PUB → 4 SUB, {frame_mb:g} MB (per consumer)", lambda: zmq_pub(size, seconds)),
        ("nats", "NATS JetStream, 1 MB", lambda: nats_case(one_mb, seconds)),
        ("redis", "Redis Streams, 1 MB", lambda: redis_case(one_mb, seconds)),
        ("buffer_1mb", "buffer in memory, 1 MB", lambda: buffer_case(one_mb, seconds)),
        ("latency", f"buffer, 1 MB paced at {rate_hz:g} Hz", lambda: buffer_case(one_mb, seconds, rate_hz=rate_hz)),
        ("durable_latency", f"buffer durable, 1 MB paced at {DURABLE_HZ:g} Hz",
         lambda: buffer_case(one_mb, seconds, durable=True, rate_hz=DURABLE_HZ)),
        ("durable_latency_deleting", f"the same, retention deleting {_size_text(SEGMENT)} segments",
         lambda: buffer_case(one_mb, seconds, durable=True, rate_hz=DURABLE_HZ, retention_bytes=4 * SEGMENT,
                             segment_bytes=SEGMENT)),
    ]  # fmt: skip
    for size in SWEEP_BYTES:  # messages/s of the buffer against raw PUSH -> PULL, same sizes, same Python ends
        cases.append((f"raw_{size}", f"PUSH→PULL, {_size_text(size)}", lambda size=size: raw_zmq(size, seconds)))
        cases.append((f"buffer_{size}", f"buffer in memory, {_size_text(size)}",
                      lambda size=size: buffer_case(size, seconds)))  # fmt: skip
    if peers:
        from benchmarks._buffer_peers import peer_cases

        cases += peer_cases(peers, seconds)
    if only:
        cases = [case for case in cases if case[0] in only]
    load_before = load_average()
    results: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in cases}
    for _ in range(rounds):  # interleaved: every case once per round
        for key, _, call in cases:
            results[key].append(_attempt(key, call))
    samples = {key: [r.get("gbps") for r in runs] for key, runs in results.items()}
    summary: dict[str, Any] = {"frame_mb": frame_mb, "seconds": seconds, "rounds": rounds}
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    for key, label, _ in cases:
        gbps = median(samples[key])
        errors = sorted({r["error"] for r in results[key] if "error" in r})
        row = {"case": label, "GB/s (median)": nan if gbps is None else gbps}
        known = [v for v in samples[key] if v is not None]
        row |= {"min": min(known) if known else nan, "max": max(known) if known else nan}
        if key == "latency":
            verdicts = [paced_verdict(r) for r in results[key] if "error" not in r]
            achieved = median([v["achieved_hz"] for v in verdicts])
            saturated = [f"saturated at {achieved:,.0f}/s" for v in verdicts if v["saturated"]]
            summary["latency"] = {
                "asked_hz": rate_hz,
                "achieved_hz": achieved,
                "saturated": saturated[0] if saturated else None,
                "p50_ms": None if saturated else median([v["p50_ms"] for v in verdicts]),
                "p99_ms": None if saturated else median([v["p99_ms"] for v in verdicts]),
            }
            row["note"] = saturated[0] if saturated else (
                f"p50 {summary['latency']['p50_ms']:.2f} ms, p99 {summary['latency']['p99_ms']:.2f} ms"
                if verdicts else "; ".join(errors))  # fmt: skip
        else:
            summary[f"{key}_gbps"] = None if gbps is None else round(gbps, 3)
            row["note"] = "; ".join(errors)
        rows.append(row)
    from benchmarks._buffer_peers import PEER_RATIOS

    pairs = {**RATIOS, **PEER_RATIOS}
    summary["ratios"] = {name: ratio(samples, a, b) for name, (a, b) in pairs.items() if a in samples and b in samples}
    rates = {key: [_messages_per_s(r) for r in runs] for key, runs in results.items()}
    summary["size_sweep"] = {
        str(size): {
            "buffer_msgs_per_s": _rounded(median(rates[f"buffer_{size}"])),
            "raw_msgs_per_s": _rounded(median(rates[f"raw_{size}"])),
            "ratio": ratio(rates, f"buffer_{size}", f"raw_{size}"),
        }
        for size in SWEEP_BYTES
        if f"buffer_{size}" in rates and f"raw_{size}" in rates
    }
    p99 = {key: [r.get("p99_ms") for r in runs] for key, runs in results.items() if key.startswith("durable_latency")}
    if len(p99) == 2:
        summary["durable_p99_ms"] = {key: _rounded(median(v)) for key, v in p99.items()}
        summary["ratios"]["durable_p99_deleting_vs_not"] = ratio(p99, "durable_latency_deleting", "durable_latency")
    for row, (key, _, _) in zip(rows, cases, strict=True):
        if key.startswith("durable_latency") and p99.get(key):
            row["note"] = f"p99 {median(p99[key]) or nan:.2f} ms" + (f"; {row['note']}" if row["note"] else "")
        row["msgs/s (median)"] = median(rates[key]) or nan
    summary["load_average"] = {"before": load_before, "after": load_average()}
    summary["machine"] = machine()
    return rows, summary


def _attempt(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except Exception as exc:  # a missing NATS or Redis must not hide the other figures
        return {"gbps": None, "error": f"{name}: {type(exc).__name__}: {exc}"}


def main(
    frame_mb: float = 4.0,
    seconds: float = 3.0,
    json_only: bool = False,
    rounds: int = 3,
    rate_hz: float = 1000.0,
    peers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every case, print the table (unless ``json_only``) and the JSON line; return the JSON object."""
    rows, summary = run(frame_mb, seconds, rounds, rate_hz=rate_hz, peers=peers)
    load = summary["load_average"]
    title = (f"buffer ({frame_mb:g} MB frames, {seconds:g} s per case, {rounds} interleaved rounds, medians; "
             f"load {load['before']} → {load['after']})")  # fmt: skip
    report(title, rows, summary, json_only)
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="photonstream bench buffer", description=__doc__.splitlines()[0])
    parser.add_argument("--frame-mb", type=float, default=4.0, help="payload size of the main cases (MB)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each case sends")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians of per-round ratios)")
    parser.add_argument("--rate-hz", type=float, default=1000.0, help="the paced latency case's rate")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=PATH", help="fastcache=BUILD_DIR")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    peers = dict(p.split("=", 1) for p in args.peer if "=" in p)
    return main(args.frame_mb, args.seconds, args.json, args.rounds, args.rate_hz, peers)


if __name__ == "__main__":
    cli()
