"""A subscription cut off from the buffer for less than the member timeout, on loopback through the WAN relay.

During the cut the subscription keeps heartbeating and acking into its socket's queue; after the heal that burst
reaches the buffer on a new connection. What the application sees: it goes on where it was, one rejoin per cut, no
frame it already had reaches the other member of its group, and nothing is lost.
"""

from __future__ import annotations

import threading
from typing import Any

from photonstream.client import subscribe
from photonstream.testing.wan import RelayThread, WanConfig
from tests.buffer.support import Producer, events_of, group_state

STREAM = "exp/1/det"


def relay_to(endpoint: str) -> RelayThread:
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    return RelayThread(WanConfig(target=(host, int(port)), delay_ms=1)).start()


def test_a_short_cut_costs_one_rejoin_and_reaches_no_second_application(make_service: Any) -> None:
    service = make_service(member_timeout_s=3.0)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(8)
    relay = relay_to(service.endpoint)
    b_got: list[Any] = []
    try:
        a = subscribe(f"tcp://127.0.0.1:{relay.port}", STREAM, group="workers", credit=4, timeout_s=10,
                      heartbeat_s=0.05, member="a")  # fmt: skip
        a_seen = events_of([next(a) for _ in range(4)])  # start and three frames (more are prefetched)
        b = subscribe(service.endpoint, STREAM, group="workers", credit=4, timeout_s=10, member="b")
        b_thread = threading.Thread(target=lambda: b_got.extend(b), daemon=True)
        b_thread.start()
        relay.cut("blackhole")
        a.commit()  # the ack of its third frame goes into the hole ...
        relay.cut("reset")  # ... and dies with the connection; new connections are refused
        healer = threading.Timer(0.5, relay.heal)  # meanwhile a heartbeats (and acks 3) into its queue
        healer.start()
        a_seen += events_of([next(a)])  # from what it had received (it acks the third frame again, into its queue)
        producer.frames(4)
        producer.end()
        a_seen += events_of(list(a))
        healer.join()
        b_thread.join(15)
        assert not b_thread.is_alive()
    finally:
        relay.stop()
        producer.close()
    b_seen = events_of(b_got)
    assert sorted(a_seen + b_seen) == list(range(12))  # each frame reached exactly one application
    assert a.stats.rejoins == 1  # the queued heartbeats did not make it subscribe again and again
    assert a.stats.duplicates == 0
    state = group_state(service.endpoint, "workers")
    assert (state["committed"], state["held_members"], state["redelivered"]) == (12, 0, 0)
