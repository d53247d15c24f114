"""A consumer process for tests: read one stream from a PULL/SUB socket and pickle what it decoded.

    python -m tests.pull_reader ENDPOINT OUTFILE [--delay S] [--topic T] [--max N]

``--max N`` exits (without closing politely) after N messages, to play a consumer that vanishes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import time

from photonstream.consumers.pull import read_stream


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("outfile")
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--topic", default=None)
    parser.add_argument("--max", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--bind", action="store_true", help="bind the endpoint (producers connect)")
    args = parser.parse_args()
    time.sleep(args.delay)
    received = []
    for message in read_stream(
        args.endpoint, idle_timeout_s=args.timeout, subscribe=args.topic, rcvhwm=2, bind=args.bind
    ):
        received.append(message)
        if args.max and len(received) >= args.max:
            os._exit(3)
    with open(args.outfile, "wb") as f:
        pickle.dump(received, f, protocol=5)  # protocol 4 loses non-native byte order here


if __name__ == "__main__":
    main()
