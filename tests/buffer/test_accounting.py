"""A group's figures add up (in = out + skipped + held, photonstream.metrics.group_accounting) when a send fails.

A send to a member whose connection is gone fails (ROUTER_MANDATORY: EHOSTUNREACH); the pick is undone, so the
message is counted neither as delivered nor as redelivered and the next member gets it as a first delivery.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from photonstream.buffer.groups import Group, Policy
from photonstream.buffer.log import StreamLog
from photonstream.client import subscribe
from photonstream.metrics import group_accounting
from tests.buffer.support import Producer, WireConsumer, events_of, group_state, stream_state, wait_until

STREAM = "exp/1/det"
ACK_TIMEOUT = 30.0


def group_of(policy: str, stored: int) -> Group:
    log = StreamLog(STREAM)
    for offset in range(stored):
        log.append("event", offset, offset, [b"x"], 0)
    return Group("g", Policy.parse(policy), log, origin=0)


def adds_up(group: Group) -> bool:
    head = group.log.head
    out = group.delivered - group.redelivered
    return head == out + group.skipped + group.expired + (head - group.cursor)


def fail_send(group: Group, now: float = 0.0) -> tuple[str, int]:
    """Pick, then fail the send as the service does: the member is detached first, then the pick is undone."""
    pick = group.next_delivery(now, ACK_TIMEOUT)
    assert pick is not None
    member, offset = pick
    group.detach(member.identity)
    group.unsent(member, offset)
    return member.member_id, offset


@pytest.mark.parametrize(("policy", "first"), [("lossless", 0), ("latest", 6), ("decimate:3", 0)])
def test_a_failed_send_is_undone_and_the_next_member_gets_it(policy: str, first: int) -> None:
    group = group_of(policy, 7)
    group.join(b"a1", "a", 4, now=0.0, incarnation="s1", principal="p")
    group.join(b"b1", "b", 4, now=0.0, incarnation="s2", principal="p")
    assert fail_send(group) == ("a", first)
    assert group.delivered == 0 and adds_up(group)
    assert not group.held and not group.inflight  # a held nothing else: nothing to keep for it
    pick = group.next_delivery(0.0, ACK_TIMEOUT)
    assert pick is not None and (pick[0].member_id, pick[1]) == ("b", first)
    assert (group.delivered, group.redelivered) == (1, 0) and adds_up(group)


def test_a_failed_redelivery_and_a_failed_resend_are_undone() -> None:
    group = group_of("lossless", 6)
    group.join(b"a1", "a", 2, now=0.0, incarnation="s1", principal="p")
    group.join(b"b1", "b", 2, now=0.0, incarnation="s2", principal="p")
    while group.next_delivery(0.0, ACK_TIMEOUT) is not None:
        pass  # a holds 0 and 2, b holds 1 and 3
    group.leave(b"b1")  # 1 and 3 go back to the group
    group.join(b"c1", "c", 1, now=0.0, incarnation="s3", principal="p")
    assert fail_send(group) == ("c", 1)  # a redelivery that never went out
    assert (group.delivered, group.redelivered) == (4, 0) and adds_up(group)
    group.detach(b"a1")
    group.join(b"a2", "a", 2, now=1.0, incarnation="s1", principal="p")
    assert fail_send(group, 1.0) == ("a", 0)  # a taken-back frame sent again, and that send failed too
    assert (group.delivered, group.redelivered) == (4, 0) and adds_up(group)
    assert group.held[b"a2"].inflight == {0, 2}  # still its own: a may have had it before its first cut
    group.join(b"d1", "d", 8, now=1.0, incarnation="s4", principal="p")
    sent = []
    while (pick := group.next_delivery(1.0, ACK_TIMEOUT)) is not None:
        sent.append(pick[1])
    assert sent == [1, 3, 4, 5] and adds_up(group)  # never a's 0 and 2
    assert (group.delivered, group.redelivered) == (8, 2)


def test_figures_add_up_after_a_send_to_a_gone_member_failed(make_service: Any) -> None:
    service = make_service(member_timeout_s=1.0)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(4)
    doomed = WireConsumer(service.endpoint)
    doomed.subscribe("session-1", credit=8)
    assert doomed.offsets(4) == [0, 1, 2, 3]
    doomed.cut()

    def send_failed() -> bool:  # a has credit left: a new frame goes to it until a send fails and detaches it
        producer.frames(1)
        return group_state(service.endpoint, "workers").get("held_members") == 1

    wait_until(send_failed, what="a send to the gone member to fail")
    stream = stream_state(service.endpoint)
    figures = group_accounting(stream, stream["groups"]["workers"])
    assert figures["in"] == figures["out"] + figures["skipped"] + figures["held"], figures
    got: list[Any] = []
    survivor = subscribe(service.endpoint, STREAM, group="workers", credit=8, timeout_s=15, member="b")
    reader = threading.Thread(target=lambda: got.extend(survivor), daemon=True)
    reader.start()
    produced = producer.events
    wait_until(lambda: len(events_of(got)) == produced, what="every frame at the survivor (a's after the timeout)")
    producer.end()
    producer.close()
    reader.join(15)
    assert sorted(events_of(got)) == list(range(produced))
    stream = stream_state(service.endpoint)
    figures = group_accounting(stream, stream["groups"]["workers"])
    assert figures["in"] == produced == figures["out"] and figures["held"] == figures["skipped"] == 0, figures
    assert figures["redelivered"] >= 4  # a's frames 0-3 (and any sent before the buffer saw it go), sent again


@pytest.mark.parametrize("policy", ["lossless", "latest"])
def test_a_picked_message_gone_from_the_log_counts_as_expired_not_delivered(policy: str) -> None:
    group = group_of(policy, 3)
    group.join(b"a1", "a", 1, now=0.0, incarnation="s1", principal="p")
    pick = group.next_delivery(0.0, ACK_TIMEOUT)
    assert pick is not None
    member, offset = pick
    group.lost(member, offset)  # what the service does when the log no longer has the payload
    assert (group.delivered, group.expired, member.credit) == (0, 1, 1) and adds_up(group)
    assert not group.inflight
    if policy == "lossless":  # settled: nobody can have it, and the group does not wait for it
        assert group.committed == 1
        pick = group.next_delivery(0.0, ACK_TIMEOUT)
        assert pick is not None and pick[1] == 1
    else:  # latest had picked the newest: nothing is left to send
        assert offset == 2 and group.next_delivery(0.0, ACK_TIMEOUT) is None
