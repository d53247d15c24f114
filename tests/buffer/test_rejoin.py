"""Rejoining a lossless group over the wire (protocol.py: SUB's ``i``, ``e`` and ``a``; START's ``e``).

A consumer here is a bare DEALER socket speaking the protocol, so each case controls exactly which acks arrive and
when a connection is gone: a rejoin of the same session settles the acks it re-sends and gets its own in-flight
frames back; a member that never comes back has its frames held until the member timeout and then redelivered;
duplicate, premature and stale acks change nothing; plain acks of another epoch (before a buffer restart) settle
nothing; and a rejoined member's credit stays within its own.
"""

from __future__ import annotations

import threading
from typing import Any

from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from tests.buffer.support import Producer, WireConsumer, events_of, free_port, group_state, produce, wait_until

STREAM = "exp/1/det"


def read_in_thread(endpoint: str, member: str) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []
    sub = subscribe(endpoint, STREAM, group="workers", credit=8, timeout_s=15, member=member)
    thread = threading.Thread(target=lambda: got.extend(sub), daemon=True)
    thread.start()
    return thread, got


def test_a_rejoin_settles_its_lost_acks_and_gets_its_own_frames_back(make_service: Any) -> None:
    service = make_service(member_timeout_s=30.0)  # nothing is released by silence in this test
    produce(service.endpoint, STREAM, 10)
    first = WireConsumer(service.endpoint)
    epoch = first.subscribe("session-1", credit=4)["e"]
    assert first.offsets(4) == [0, 1, 2, 3]  # its application finishes 0 and 1; the acks never leave
    first.cut()
    again = WireConsumer(service.endpoint)
    assert again.subscribe("session-1", credit=4, e=epoch, a=[0, 1])["e"] == epoch
    assert again.offsets(4) == [2, 3, 4, 5]  # its own unacked frames first, then new ones
    state = group_state(service.endpoint, "workers")
    assert (state["members"], state["held_members"], state["committed"]) == (1, 0, 2)  # replaced, not added
    other, other_got = read_in_thread(service.endpoint, "b")
    wait_until(lambda: len(events_of(other_got)) == 4, what="b to get the rest while a still holds 2-5")
    again.send(P.CRED, {"c": 0, "a": [2, 3, 4, 5]})
    again.send(P.BYE, {})
    other.join(15)
    assert events_of(other_got) == [6, 7, 8, 9]  # nothing the first member's application had
    assert group_state(service.endpoint, "workers")["committed"] == 10


def test_a_member_that_never_comes_back_has_its_frames_redelivered_after_the_member_timeout(
    make_service: Any,
) -> None:
    service = make_service(member_timeout_s=1.5)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(6)
    doomed = WireConsumer(service.endpoint)
    doomed.subscribe("session-1", credit=8)
    assert doomed.offsets(6) == [0, 1, 2, 3, 4, 5]
    doomed.cut()

    def detached() -> bool:  # the member has credit left: a new frame goes to it, and the send fails
        producer.frames(1)
        return group_state(service.endpoint, "workers").get("held_members") == 1

    wait_until(detached, what="the buffer to detach the gone member")
    state = group_state(service.endpoint, "workers")
    held = state["inflight"]  # 0-5, and any frame sent before the buffer saw the connection go
    assert state["members"] == 0 and held >= 6
    survivor, got = read_in_thread(service.endpoint, "b")
    produced = producer.events
    wait_until(lambda: len(events_of(got)) == produced, what="the held frames to reach the survivor")
    producer.end()
    producer.close()
    survivor.join(15)
    events = events_of(got)
    assert not set(events[: produced - held]) & set(range(6))  # while they were held, only others went out
    assert sorted(events) == list(range(produced))
    state = group_state(service.endpoint, "workers")
    assert (state["held_members"], state["redelivered"], state["committed"]) == (0, held, produced)


def test_duplicate_premature_and_stale_acks_change_nothing(service: Any) -> None:
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(4)
    consumer = WireConsumer(service.endpoint)
    epoch = consumer.subscribe("session-1", credit=4)["e"]
    assert consumer.offsets(4) == [0, 1, 2, 3]
    consumer.send(P.CRED, {"c": 0, "a": [0, 1, 0, 1, 1, 7, 9]})  # 7 and 9 are not stored yet
    wait_until(lambda: group_state(service.endpoint, "workers")["committed"] == 2, what="acks of 0 and 1")
    # a rejoin from another opening of the stream (say, before a buffer restart): its acks do not count here
    consumer.subscribe("session-1", credit=4, e=epoch + 1, a=[2, 3])
    assert consumer.offsets(2) == [2, 3]  # taken back by the same session, sent again
    assert group_state(service.endpoint, "workers")["committed"] == 2
    producer.frames(6)
    received = [2, 3]
    consumer.send(P.CRED, {"c": 2, "a": [2, 3, 2, 3]})
    while received[-1] < 9:
        (offset,) = consumer.offsets(1)
        received.append(offset)
        consumer.send(P.CRED, {"c": 1, "a": [offset, offset, 0]})
    assert received == list(range(2, 10))  # 7 and 9 were delivered: the early acks were ignored
    wait_until(lambda: group_state(service.endpoint, "workers")["committed"] == 10, what="every ack")
    assert group_state(service.endpoint, "workers")["redelivered"] == 2
    consumer.cut()


def test_malformed_rejoin_acks_are_refused_with_the_field_named(service: Any) -> None:
    produce(service.endpoint, STREAM, 1)
    for acks in ("zero", [-1], [1.5], list(range(4001))):
        consumer = WireConsumer(service.endpoint)
        consumer.send(P.SUB, {"s": STREAM, "g": "workers", "m": "a", "i": "s", "e": 1, "a": acks})
        command, header = consumer.receive()
        assert command == P.ERR and header["c"] == "malformed", header
        assert "'a'" in header["m"]
        consumer.cut()


def test_plain_acks_of_another_epoch_settle_nothing_after_a_buffer_restart(make_service: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    before = make_service(bind=endpoint)
    produce(before.endpoint, STREAM, 4, end=False)
    consumer = WireConsumer(endpoint)
    old_epoch = consumer.subscribe("session-1", credit=8)["e"]
    assert consumer.offsets(4) == [0, 1, 2, 3]
    before.stop()  # a memory stream: gone with the buffer
    make_service(bind=endpoint)
    produce(endpoint, STREAM, 4, end=False)  # opened anew: offsets 0-3 are other messages now
    consumer.cut()  # (a SUB on the old socket could go into its dead connection before it notices the restart)
    consumer = WireConsumer(endpoint)  # the same session, over a new connection
    new_epoch = consumer.subscribe("session-1", credit=8)["e"]
    assert new_epoch != old_epoch
    assert consumer.offsets(4) == [0, 1, 2, 3]
    consumer.send(P.CRED, {"c": 0, "a": [0, 1], "e": old_epoch})  # queued before the restart, say
    assert consumer.group_state()["committed"] == 0
    consumer.send(P.CRED, {"c": 0, "a": [0, 1], "e": new_epoch})
    assert consumer.group_state()["committed"] == 2
    consumer.send(P.CRED, {"c": 0, "a": [2]})  # an older client's ack, without an epoch: counted as before
    assert consumer.group_state()["committed"] == 3
    consumer.send(P.CRED, {"c": 0, "a": [3], "e": "yesterday"})
    command, header = consumer.receive()
    assert command == P.ERR and header["c"] == "malformed" and "'e'" in header["m"], header
    assert consumer.group_state()["committed"] == 3
    consumer.cut()


def test_credit_stays_within_the_members_own_after_a_rejoin(service: Any) -> None:
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(12)
    first = WireConsumer(service.endpoint)
    epoch = first.subscribe("session-1", credit=4)["e"]
    assert first.offsets(4) == [0, 1, 2, 3]
    first.cut()
    again = WireConsumer(service.endpoint)
    again.subscribe("session-1", credit=4, e=epoch, a=[0])  # the buffer had not seen the cut: a live takeover
    assert again.offsets(3) == [1, 2, 3]  # taken back, within its credit of 4: one slot for 4
    assert again.offsets(1) == [4]
    state = again.group_state()
    assert (state["member_credit"]["a"], state["member_inflight"]["a"]) == (0, 4)
    again.send(P.CRED, {"c": 100, "a": [1, 2], "e": epoch})  # far more credit than it was ever sent
    assert again.offsets(2) == [5, 6]
    state = again.group_state()
    assert (state["member_credit"]["a"], state["member_inflight"]["a"]) == (0, 4)  # not 98 more
    again.cut()
    producer.close()


def test_acks_and_goodbye_that_arrive_after_the_member_was_set_aside_still_count(make_service: Any) -> None:
    service = make_service(member_timeout_s=60.0)  # nothing is released by silence in this test
    produce(service.endpoint, STREAM, 6, end=False)
    consumer = WireConsumer(service.endpoint)
    consumer.subscribe("session-1", credit=4)
    assert consumer.offsets(4) == [0, 1, 2, 3]
    (identity,) = service._members

    def send_failed() -> int:  # what a send that failed does (EHOSTUNREACH) while this peer's messages are queued
        service._member_gone(identity)
        return 0

    service._in_loop(send_failed, 5.0)
    assert consumer.group_state()["held_members"] == 1
    consumer.send(P.CRED, {"c": 2, "a": [0, 1]})  # sent before the peer went: the acks settle 0 and 1
    consumer.send(P.BYE, {})  # ... and it left: 2 and 3 go back to the group now, not at the member timeout
    wait_until(lambda: group_state(service.endpoint, "workers").get("held_members") == 0, what="the goodbye")
    state = group_state(service.endpoint, "workers")
    assert (state["committed"], state["inflight"], state["members"]) == (2, 0, 0)
    consumer.cut()
