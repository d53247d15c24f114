"""A PULL reader process for benchmarks: counts messages and bytes until the end message, prints JSON.

    python -m benchmarks._pull_counter ENDPOINT [--bind] [--end-marker TEXT] [--idle-end S]

Messages are not decoded (only photonstream's start and end messages are recognised), so the figure is the
transport's, as a consumer that forwards or stores frames would see it. It prints ``{"ready": true}`` once its
socket is set up, so the sender starts after it (messages queued before the reader runs would arrive in a burst
and inflate the rate); the seconds run from the start message's arrival (else the first message's) to the end.
A peer's stream ends at a message holding ``--end-marker``, or ``--idle-end`` seconds after its last message
(the seconds then run from its first to its last message).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import zmq

from photonstream.frames import EndMessage, StartMessage
from photonstream.serializers.base import create, detect


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("--bind", action="store_true", help="bind the endpoint (the sender connects)")
    parser.add_argument("--end-marker", default=None, help="a message containing these bytes ends the stream")
    parser.add_argument("--idle-end", type=float, default=0.0, help="end this long after the last message")
    args = parser.parse_args()
    marker = args.end_marker.encode() if args.end_marker else None
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    (sock.bind if args.bind else sock.connect)(args.endpoint)
    print(json.dumps({"ready": True}), flush=True)
    began: float | None = None
    count = nbytes = 0
    first = last = 0.0
    serializer = None
    while True:
        wait_ms = int(args.idle_end * 1000) if args.idle_end and count else 120_000
        if not sock.poll(wait_ms):
            if args.idle_end and count:
                break
            print(json.dumps({"error": "timeout", "messages": count}))
            sys.exit(1)
        frames = sock.recv_multipart(copy=False)
        now = time.perf_counter()
        size = sum(len(f.buffer) for f in frames)
        if marker is not None:
            if size < 65536 and any(marker in bytes(f.buffer) for f in frames):
                last = now
                break
        elif size < 65536:  # only small messages can be the start or end message: decode those
            try:
                serializer = serializer or create(detect(frames[0].buffer))
                message = serializer.decode([f.buffer for f in frames])
            except Exception:  # not ours: a peer's small message, counted like any other
                message = None
            if isinstance(message, EndMessage):
                last = now
                break
            if isinstance(message, StartMessage):
                began = now
                continue
        if count == 0:
            first = now
        count += 1
        nbytes += size
        last = now
    print(json.dumps({"messages": count, "bytes": nbytes, "seconds": last - (first if began is None else began)}))


if __name__ == "__main__":
    main()
