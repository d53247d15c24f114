"""A stand-in peer for ``bench pipeline --peer``: PUSHes N messages of its own format (not photonstream's) to
an endpoint and a last one holding its end marker, as a peer such as lclstreamer would send its stream.

    python -m tests.bench_peer ENDPOINT COUNT
"""

from __future__ import annotations

import sys

import zmq


def main() -> None:
    endpoint, count = sys.argv[1], int(sys.argv[2])
    context = zmq.Context()
    socket = context.socket(zmq.PUSH)
    socket.connect(endpoint)
    payload = b"peer-frame" + bytes(100_000)
    for _ in range(count):
        socket.send(payload)
    socket.send(b"PEER-END")
    socket.close(linger=30_000)
    context.term()


if __name__ == "__main__":
    main()
