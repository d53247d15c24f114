"""A PULL reader process for benchmarks: counts messages and bytes until the end message, prints JSON.

    python -m benchmarks._pull_counter ENDPOINT

Messages are not decoded (only the end message is recognised), so the figure is the transport's, as a consumer
that forwards or stores frames would see it.
"""

from __future__ import annotations

import json
import sys
import time

import zmq

from photonstream.frames import EndMessage, StartMessage
from photonstream.serializers.base import create, detect


def main() -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.connect(sys.argv[1])
    count = nbytes = 0
    first = last = 0.0
    serializer = None
    while True:
        if not sock.poll(60_000):
            print(json.dumps({"error": "timeout", "messages": count}))
            sys.exit(1)
        frames = sock.recv_multipart(copy=False)
        now = time.perf_counter()
        size = sum(len(f.buffer) for f in frames)
        if size < 65536:  # only small messages can be the start or end message: decode those
            serializer = serializer or create(detect(frames[0].buffer))
            message = serializer.decode([f.buffer for f in frames])
            if isinstance(message, EndMessage):
                last = now
                break
            if isinstance(message, StartMessage):
                continue
        if count == 0:
            first = now
        count += 1
        nbytes += size
    print(json.dumps({"messages": count, "bytes": nbytes, "seconds": last - first}))


if __name__ == "__main__":
    main()
