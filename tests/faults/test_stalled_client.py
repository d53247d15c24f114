"""A client that connects and stalls: it joins a lossless group with credit 4, keeps its connection alive with
heartbeats, and never acks (and never reads). Another one opens a TCP connection and says nothing at all.

What the user sees: the buffer's stats show the stalled member holding its 4 messages; after the ack timeout they
go to the group's other member, whose application gets every frame once; another group is not slowed at all; the
stream ends completed for both groups.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from photonstream.frames import EndMessage
from tests.buffer.support import events_of, group_state, produce, start_service, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

STREAM = "faults/1/det"
EVENTS = 40
STALLED_CREDIT = 4


class StalledMember:
    """Subscribes, then only heartbeats (from its own thread, which owns the socket) until stopped."""

    def __init__(self, endpoint: str) -> None:
        self._endpoint = endpoint
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self._endpoint)
        sock.send(P.envelope(P.SUB, {"s": STREAM, "g": "workers", "pol": "lossless", "c": STALLED_CREDIT,
                                     "m": "stalled"}))  # fmt: skip
        while not self._stop.wait(0.2):
            sock.send(P.envelope(P.HB, {}))  # alive, but it never reads what it was sent and never acks
        sock.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture
def service() -> Iterator[Any]:
    started = start_service(ack_timeout_s=1.0, member_timeout_s=30.0)
    yield started
    started.stop()


def test_a_stalled_member_delays_nobody_and_its_messages_reach_the_other_member(service: Any) -> None:
    produce(service.endpoint, STREAM, EVENTS)
    host, port = service.endpoint.removeprefix("tcp://").rsplit(":", 1)
    silent = socket.create_connection((host, int(port)))  # a TCP peer that never speaks ZeroMQ
    stalled = StalledMember(service.endpoint)
    try:
        holding = wait_until(
            lambda: group_state(service.endpoint, "workers", STREAM).get("member_inflight", {}).get("stalled"),
            what="the stalled member to hold its credit's worth",
        )
        assert holding == STALLED_CREDIT  # the stall is visible in the stats

        archive = list(subscribe(service.endpoint, STREAM, group="archive", credit=8, timeout_s=10))
        worker = subscribe(service.endpoint, STREAM, group="workers", credit=8, timeout_s=10, member="healthy")
        got = list(worker)
        workers = group_state(service.endpoint, "workers", STREAM)
    finally:
        stalled.stop()
        silent.close()

    frames = events_of(got)
    lost = len(set(range(EVENTS)) - set(frames))
    duplicates = len(frames) - len(set(frames))
    assert (lost, duplicates) == (0, 0)
    assert events_of(archive) == list(range(EVENTS))  # the other group: every frame, in order, not held up
    assert isinstance(got[-1], EndMessage) and got[-1].reason == "completed"
    assert isinstance(archive[-1], EndMessage) and archive[-1].reason == "completed"
    assert workers["redelivered"] >= STALLED_CREDIT
    assert workers["member_inflight"]["stalled"] == 0 and workers["ended"]
    assert worker.stats.redelivered >= STALLED_CREDIT  # the application is told how many were redelivered
