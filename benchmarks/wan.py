"""Streaming across a wide-area link: ``photonstream bench wan [--json]``.

The cross-facility setup of ``tests/test_cross_facility.py`` (``photonstream.testing.cross_facility``): two network
namespaces joined through our relay (one-way delay each direction, a cap shared by every connection; defaults
25 ms and 200 Mb/s). The facility runs ``photonstream serve`` (mTLS, the embedded buffer, local jobs); in the HPC
namespace a user requests ``frames`` synthetic frames through the API and two workers of one lossless group read
them through the relay. Cases:

- ``raw tcp``: the baseline, in the same run over the same kind of link: the same bytes as plain TCP, one
  connection per worker, nothing around them: what the link itself allows;
- ``photonstream curve``: the buffer with CURVE (authenticated, encrypted), as a facility runs it;
- ``photonstream none``: the buffer without security, to see what CURVE costs.

Figures per case: goodput (image bytes the applications got per second, after the first ``workers × credit`` frames:
those may have been in flight before the first arrived; the baseline is measured the same way), as a fraction of
the cap and against the raw TCP goodput; request → first frame (alice's ``POST /v1/streams`` until a worker has
the first frame), request → last frame (the last one reached a worker), request → completed (until the API told
alice the stream completed: the job's end, once the producer handed its last frame to the buffer; across a slow
link the workers are still reading then, so it can come before the last frame); whether every frame arrived
exactly once. Needs root and iproute2 (network namespaces).

Each worker has at most ``credit`` frames in flight, so a group moves at most ``workers × credit × frame`` bytes
per round trip: with the defaults 2 × 8 × 192 KiB per 50 ms, about 500 Mb/s. Below that the link's cap decides;
above it (``--rate-mbps 1000``) the credit does, and ``--credit`` shows how much a larger window gives back.

    python -m benchmarks.wan [--json]
"""

from __future__ import annotations

import datetime as dt
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks._report import machine, report
from photonstream.errors import PhotonstreamError
from photonstream.testing.cross_facility import (
    ApiSite,
    Link,
    StreamOutcome,
    goodput_mbps,
    raw_tcp_transfer,
    request_stream,
)
from photonstream.testing.netns import NamespacePair, unavailable_reason

SHAPE = (384, 256)  # uint16: 192 KiB frames
WORKERS = 2
CREDIT = 8  # frames each worker may have in flight (the default of the test; see --credit)


class BenchUnavailable(PhotonstreamError):
    """This machine cannot run the benchmark (no root, no iproute2); the message says why in one line."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _exactly_once(frames: list[dict[str, Any]], expected: int) -> tuple[int, int]:
    """(lost, duplicated) of events 0..expected-1."""
    seen = Counter(int(f["event"]) for f in frames)
    lost = sum(1 for event in range(expected) if seen[event] == 0)
    return lost, sum(n - 1 for n in seen.values() if n > 1)


def raw_case(pair: NamespacePair, link: Link, root: Path, frames: int, frame_bytes: int, credit: int) -> dict[str, Any]:
    outcome = raw_tcp_transfer(pair, link, root, frames, frame_bytes, connections=WORKERS)
    received = outcome.frames()  # numbered per connection: TCP delivers each byte once, in order
    mbps = goodput_mbps(received, skip=WORKERS * credit)  # skipped as in the streams, to compare alike
    return {
        "case": "raw tcp",
        "frames": len(received),
        "payload_mb": round(outcome.payload_bytes / 1e6, 2),
        "goodput_mbps": round(mbps, 1),
        "goodput_of_cap": round(mbps / link.rate_mbps, 3),
        "vs_raw": 1.0,
        "request_to_first_frame_ms": None,
        "request_to_last_frame_ms": None,
        "request_to_completed_ms": None,
        "connect_to_first_frame_ms": _ms(received[0]["t"] - outcome.started_at) if received else None,
        "lost": frames - len(received),
        "duplicated": None,
        "completed": outcome.payload_bytes == frames * frame_bytes,
    }


def stream_case(site: ApiSite, frames: int) -> dict[str, Any]:
    outcome: StreamOutcome = request_stream(site, frames, SHAPE, workers=WORKERS)
    received = outcome.frames()
    requested_at = float(outcome.answer["requested_at"])
    lost, duplicated = _exactly_once(received, frames)
    summaries = [s or {} for s in outcome.summaries]
    final = outcome.final["final"]
    mbps = goodput_mbps(received, skip=WORKERS * site.credit)
    streaming_at = final.get("streaming_at")
    return {
        "case": f"photonstream {site.security}",
        "frames": len(received),
        "payload_mb": round(sum(f["bytes"] for f in received) / 1e6, 2),
        "goodput_mbps": round(mbps, 1),
        "goodput_of_cap": round(mbps / site.link.rate_mbps, 3),
        "vs_raw": None,  # filled in against the baseline
        "request_to_first_frame_ms": _ms(received[0]["t"] - requested_at) if received else None,
        "request_to_last_frame_ms": _ms(received[-1]["t"] - requested_at) if received else None,
        "request_to_completed_ms": _ms(float(outcome.final["seen_at"]) - requested_at),
        "create_round_trip_ms": _ms(float(outcome.answer["answered_at"]) - requested_at),
        "request_to_job_streaming_ms": (
            _ms(dt.datetime.fromisoformat(streaming_at).timestamp() - requested_at) if streaming_at else None
        ),
        "lost": lost,
        "duplicated": duplicated,
        "completed": final.get("state") == "completed" and all(s.get("end_reason") == "completed" for s in summaries),
        "link_overhead": round(outcome.counters["bytes_down"] / max(1, sum(f["bytes"] for f in received)) - 1, 4),
    }


def main(
    json_only: bool = False,
    frames: int = 600,
    delay_ms: float = 25.0,
    rate_mbps: float = 200.0,
    securities: tuple[str, ...] = ("curve", "none"),
    credit: int = CREDIT,
) -> dict[str, Any]:
    reason = unavailable_reason()
    if reason is not None:
        raise BenchUnavailable(f"bench wan needs network namespaces (root and iproute2): {reason}")
    if frames < 4 or delay_ms < 0 or rate_mbps <= 0 or credit < 1:
        raise BenchUnavailable("bench wan needs --frames >= 4, --delay-ms >= 0, --rate-mbps > 0 and --credit >= 1")
    link = Link(delay_ms=delay_ms, rate_mbps=rate_mbps)
    frame_bytes = SHAPE[0] * SHAPE[1] * 2
    rows: list[dict[str, Any]] = []
    with NamespacePair() as pair, tempfile.TemporaryDirectory(prefix="photonstream-bench-wan-") as tmp:
        root = Path(tmp)
        (root / "raw").mkdir()
        rows.append(raw_case(pair, link, root / "raw", frames, frame_bytes, credit))
        for security in securities:
            (root / security).mkdir()
            site = ApiSite(pair, root / security, security, link, credit=credit)
            try:
                rows.append(stream_case(site, frames))
            finally:
                site.stop()
    raw = rows[0]["goodput_mbps"]
    for row in rows[1:]:
        row["vs_raw"] = round(row["goodput_mbps"] / raw, 3) if raw else None
    headings = {"case": "case", "frames": "frames", "payload_mb": "MB", "goodput_mbps": "goodput Mb/s",
                "goodput_of_cap": "of cap", "vs_raw": "vs raw", "request_to_first_frame_ms": "req→1st frame ms",
                "request_to_last_frame_ms": "req→last ms", "request_to_completed_ms": "req→completed ms",
                "lost": "lost", "duplicated": "dup", "completed": "completed"}  # fmt: skip
    table = [{heading: row.get(key) for key, heading in headings.items()} for row in rows]
    summary: dict[str, Any] = {
        "delay_ms_each_way": delay_ms,
        "cap_mbps": rate_mbps,
        "frames": frames,
        "frame_kib": frame_bytes // 1024,
        "workers": WORKERS,
        "credit": credit,
        "machine": machine(),
        "raw_tcp_goodput_mbps": raw,
        "raw_tcp_goodput_of_cap": rows[0]["goodput_of_cap"],
        "raw_tcp_connect_to_first_frame_ms": rows[0]["connect_to_first_frame_ms"],
    }
    for row in rows[1:]:
        name = row["case"].split()[1]
        for key in ("goodput_mbps", "goodput_of_cap", "vs_raw", "request_to_first_frame_ms",
                    "request_to_last_frame_ms", "request_to_completed_ms", "create_round_trip_ms",
                    "request_to_job_streaming_ms", "lost", "duplicated", "completed", "link_overhead"):  # fmt: skip
            summary[f"{name}_{key}"] = row[key]
    report(f"photonstream bench wan ({delay_ms:g} ms each way, {rate_mbps:g} Mb/s)", table, summary, json_only)
    return summary


if __name__ == "__main__":
    main(json_only="--json" in sys.argv[1:])
