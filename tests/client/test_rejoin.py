"""A subscription cut off from the buffer for less than the member timeout, on loopback through the WAN relay.

During the cut the subscription keeps heartbeating and acking into its socket's queue; after the heal that burst
reaches the buffer on a new connection. What the application sees: it goes on where it was, one rejoin per cut, no
frame it already had reaches the other member of its group, and nothing is lost. A memory stream opened anew after
a buffer restart (another epoch in START) is read from its first offset again, and acks carry the epoch.
"""

from __future__ import annotations

import threading
from typing import Any

import zmq

from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from photonstream.frames import EndMessage
from photonstream.testing.wan import RelayThread, WanConfig
from tests.buffer.support import Producer, events_of, free_port, group_state, wait_until

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


def test_a_stream_opened_anew_after_a_buffer_restart_is_read_from_its_first_offset(make_service: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    before = make_service(bind=endpoint)
    first_run = Producer(endpoint, STREAM)
    first_run.start()
    first_run.frames(5)
    sub = subscribe(endpoint, STREAM, group="workers", credit=4, timeout_s=15, heartbeat_s=0.05)
    assert events_of([next(sub) for _ in range(6)]) == [0, 1, 2, 3, 4]  # start, then offsets 0-4
    first_run.close()
    before.stop()  # a memory stream: gone with the buffer
    after = make_service(bind=endpoint)
    second_run = Producer(endpoint, STREAM)
    second_run.events = 100  # its frames are told apart by their event numbers; their offsets are 0-5 again
    second_run.start()
    second_run.frames(6)
    second_run.end()
    second_run.close()
    rest = list(sub)
    assert events_of(rest) == [100, 101, 102, 103, 104, 105]  # not dropped as offsets already seen
    assert sub.stats.rejoins == 1 and sub.stats.duplicates == 0 and isinstance(rest[-1], EndMessage)
    wait_until(lambda: group_state(after.endpoint, "workers").get("committed") == 6, what="every new frame acked")


def test_acks_carry_the_epoch_of_the_start_message() -> None:
    buffer = zmq.Context.instance().socket(zmq.ROUTER)  # a bare peer in the buffer's place: it sees the wire as is
    buffer.setsockopt(zmq.LINGER, 0)
    port = buffer.bind_to_random_port("tcp://127.0.0.1")

    def receive(command: bytes) -> tuple[bytes, dict[str, Any]]:
        while True:
            assert buffer.poll(5000), f"no {command!r} from the subscription"
            peer, envelope = buffer.recv_multipart()[:2]
            got, header = P.open_envelope(envelope)
            if got == command:
                return peer, header

    sub = subscribe(f"tcp://127.0.0.1:{port}", STREAM, credit=4, decode=False, timeout_s=5)
    try:
        peer, _ = receive(P.SUB)
        buffer.send_multipart([peer, P.envelope(P.START, {"s": STREAM, "g": "default", "z": "msgpack", "e": 7}), b""])
        buffer.send_multipart([peer, P.envelope(P.MSG, {"o": 0, "q": 0, "k": "event", "h": 1}), b"frame"])
        assert next(sub).kind == "start" and next(sub).offset == 0
        sub.commit()
        _, header = receive(P.CRED)
        assert (header["a"], header["c"], header["e"]) == ([0], 1, 7)
    finally:
        sub.close()
        buffer.close()
