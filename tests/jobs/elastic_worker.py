"""A slow consumer worker for the elastic pool tests: sleeps on each frame, records it, acks it.

    python tests/jobs/elastic_worker.py ENDPOINT EXPERIMENT/RUN/STREAM GROUP OUT_DIR WORKER [--work-s S] [--credit N]
                                        [--abrupt]

Each frame it finished is a line ``{"event": E, "worker": W}`` in ``OUT_DIR/WORKER.jsonl``, written and flushed
*before* the frame is acked, so a frame recorded twice would show a redelivery of finished work and a frame
missing would show a loss. The buffer credential, where one is needed, comes from $PHOTONSTREAM_BUFFER_CREDENTIALS
(as the API gives it to its pools' workers).
The last line is ``{"summary": true, "left": "end" | "sigterm", "frames": N}``.

SIGTERM (a pool removing this worker) means: leave without losing or repeating a frame. While a frame is in hand
it is finished, recorded and acked first; while the worker waits for the buffer it leaves at once. Leaving closes
the subscription (BYE): the buffer gives the frames it had sent ahead to the group's other members.
With ``--abrupt`` SIGTERM kills it at once, as it does most programs: the buffer redelivers its unacked frames
when it notices the member is gone, and a frame finished but not yet acked may be processed twice.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from photonstream.buffer.credentials import Credentials
from photonstream.client import subscribe
from photonstream.client.subscription import Subscription
from photonstream.frames import Frame, FrameBatch

WAITING_CODE = Subscription._receive.__code__  # the only place where leaving hands no frame out half-way


class Leave(Exception):
    pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("endpoint")
    parser.add_argument("stream")
    parser.add_argument("group")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("worker")
    parser.add_argument("--work-s", type=float, default=0.1, help="time spent on each frame")
    parser.add_argument("--credit", type=int, default=1)
    parser.add_argument("--abrupt", action="store_true", help="let SIGTERM kill the worker at once")
    args = parser.parse_args(argv)

    state = {"busy": False, "stop": False, "leaving": False}

    def on_signal(_signum: int, frame: FrameType | None) -> None:
        state["stop"] = True
        if state["busy"] or state["leaving"]:
            return
        while frame is not None and frame.f_code is not WAITING_CODE:
            frame = frame.f_back
        if frame is not None:
            state["leaving"] = True
            raise Leave
        signal.setitimer(signal.ITIMER_REAL, 0.02)  # between a frame's arrival and its handing out: look again

    if not args.abrupt:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGALRM, on_signal)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    frames = 0
    left = "end"
    with (args.out_dir / f"{args.worker}.jsonl").open("a") as out:
        sub = subscribe(args.endpoint, args.stream, group=args.group, credit=args.credit, heartbeat_s=0.25,
                        credentials=Credentials.from_env())  # fmt: skip
        try:
            for message in sub:
                if not isinstance(message, Frame | FrameBatch):
                    continue
                state["busy"] = True
                for frame in message.frames if isinstance(message, FrameBatch) else [message]:
                    time.sleep(args.work_s)
                    out.write(json.dumps({"event": frame.event, "worker": args.worker}) + "\n")
                    frames += 1
                out.flush()
                sub.commit()
                state["busy"] = False
                if state["stop"]:
                    left = "sigterm"
                    break
        except Leave:
            left = "sigterm"
        finally:
            state["leaving"] = True
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.setitimer(signal.ITIMER_REAL, 0)
            sub.close()
        out.write(json.dumps({"summary": True, "left": left, "frames": frames}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
