"""A consumer killed with SIGKILL mid-stream: its unacked messages reach the other member, each once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

from photonstream.client import subscribe
from tests.buffer.support import REPO, events_of, group_state, produce, wait_until

STREAM = "exp/1/det"

DOOMED_CONSUMER = textwrap.dedent(
    """
    import json, sys, time
    from photonstream.client import subscribe
    from photonstream.frames import Frame

    sub = subscribe(sys.argv[1], sys.argv[2], group="workers", credit=8, timeout_s=20)
    seen = []
    for message in sub:
        if isinstance(message, Frame):
            seen.append(message.event)
            if len(seen) == 5:
                break
    sub.commit()  # these five are done; the buffer sends more, which this process will never finish
    print(json.dumps(seen), flush=True)
    time.sleep(60)
    """
)


def test_kill9_of_a_consumer_moves_its_unacked_messages_to_the_other_member(make_service: Any) -> None:
    service = make_service(member_timeout_s=1.0)
    produce(service.endpoint, STREAM, 60)
    doomed = subprocess.Popen(
        [sys.executable, "-c", DOOMED_CONSUMER, service.endpoint, STREAM], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        doomed_seen = json.loads(doomed.stdout.readline())
        wait_until(lambda: group_state(service.endpoint, "workers").get("inflight") == 8, what="prefetch")
        survivor = subscribe(service.endpoint, STREAM, group="workers", credit=4, timeout_s=20, heartbeat_s=0.2)
        wait_until(lambda: group_state(service.endpoint, "workers").get("members") == 2, what="second member")
        os.kill(doomed.pid, signal.SIGKILL)
        survivor_seen = events_of(list(survivor))
    finally:
        doomed.kill()
        doomed.wait(10)
    assert len(doomed_seen) == 5
    assert not set(doomed_seen) & set(survivor_seen)
    assert sorted(doomed_seen + survivor_seen) == list(range(60))
    assert group_state(service.endpoint, "workers")["redelivered"] >= 8
