"""A worker that reads a stream from the buffer and records what its application saw.

Used by the fault tests and ``photonstream bench wan``::

    python -m photonstream.testing.stream_worker ENDPOINT EXPERIMENT/RUN/STREAM OUT.jsonl [--group G] [--credit N] ...
    python -m photonstream.testing.stream_worker - - OUT.jsonl ...   # data_endpoint JSON from stdin

With ``--credentials FILE`` (a ``Credentials`` JSON: the stream's consumer key pair or token) the first form reads
a buffer that authenticates.

With ``-`` for ENDPOINT and STREAM the worker prints ``{"ready": true}`` once imported, then reads one line from
stdin: a stream's ``data_endpoint`` as the API's create response gives it, and subscribes with its address, first
stream and credentials (``subscribe_stream``), as a consumer at another site that was handed the request's answer.

Every frame handed to the application is written to OUT as ``{"event": E, "seq": S, "bytes": B, "t": T}`` and
flushed at once, so a worker killed with SIGKILL leaves the list of what it had finished (with ``--work-s`` a
``{"begin": E}`` line marks the frame it is working on). The last line is a
summary: ``{"summary": true, "subscribed_at": T0, "first_frame_at": T1, "end_reason": ..., ...}`` (times are
``time.time()``, comparable across processes and network namespaces). Exit status 0 when the stream ended,
3 on a ``ConsumerError`` (the summary has its message).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from photonstream.buffer.credentials import Credentials
from photonstream.client import ConsumerError, Subscription, subscribe, subscribe_stream
from photonstream.frames import EndMessage, Frame


def read_records(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """(frames the worker's application saw, its summary or None if it did not finish)."""
    frames: list[dict[str, Any]] = []
    summary = None
    if not path.exists():
        return frames, summary
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by SIGKILL
        if record.get("summary"):
            summary = record
        elif "event" in record:
            frames.append(record)
    return frames, summary


def last_line(path: Path) -> dict[str, Any]:
    lines = path.read_text().splitlines() if path.exists() else []
    try:
        return json.loads(lines[-1]) if lines else {}
    except ValueError:
        return {}


def open_subscription(args: argparse.Namespace) -> tuple[Subscription, float]:
    """The subscription and when it began (``time.time()``)."""
    options = {"credit": args.credit, "timeout_s": args.timeout_s, "heartbeat_s": args.heartbeat_s}
    if args.endpoint != "-":
        credentials = Credentials.from_json(args.credentials.read_text()) if args.credentials else None
        began = time.time()
        return subscribe(args.endpoint, args.stream, group=args.group, credentials=credentials, **options), began
    print(json.dumps({"ready": True}), flush=True)
    data_endpoint = json.loads(sys.stdin.readline())
    began = time.time()
    return subscribe_stream(data_endpoint, args.group, **options), began


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("stream")
    parser.add_argument("out", type=Path)
    parser.add_argument("--group", default="workers")
    parser.add_argument("--credit", type=int, default=16)
    parser.add_argument("--timeout-s", type=float, default=30.0)
    parser.add_argument("--heartbeat-s", type=float, default=0.25)
    parser.add_argument("--work-s", type=float, default=0.0, help="pretend to work this long on each frame")
    parser.add_argument("--credentials", type=Path, help="the stream's consumer credential (Credentials JSON)")
    args = parser.parse_args(argv)
    with args.out.open("w") as out:
        first_frame_at = last_frame_at = None
        end_reason = error = None
        sub, subscribed_at = open_subscription(args)
        try:
            for message in sub:
                if isinstance(message, Frame):
                    if args.work_s:
                        out.write(json.dumps({"begin": message.event}) + "\n")  # working on it, not done
                        out.flush()
                        time.sleep(args.work_s)
                    now = time.time()
                    first_frame_at = first_frame_at or now
                    last_frame_at = now
                    nbytes = sum(int(a.nbytes) for a in message.arrays.values())
                    out.write(json.dumps({"event": message.event, "seq": message.seq, "bytes": nbytes, "t": now}))
                    out.write("\n")
                    out.flush()
                elif isinstance(message, EndMessage):
                    end_reason = message.reason
        except ConsumerError as exc:
            error = str(exc)
        finally:
            sub.close()
        s = sub.stats
        summary = {
            "summary": True,
            "subscribed_at": subscribed_at,
            "first_frame_at": first_frame_at,
            "last_frame_at": last_frame_at,
            "end_reason": end_reason,
            "end_error": sub.end.error if sub.end is not None else None,
            "error": error,
            "payload_bytes": s.bytes,
            "duplicates_dropped": s.duplicates,
            "rejoins": s.rejoins,
            "redelivered": s.redelivered,
            "skipped": s.skipped,
            "expired": s.expired,
        }
        out.write(json.dumps(summary) + "\n")
    return 0 if error is None else 3


if __name__ == "__main__":
    sys.exit(main())
