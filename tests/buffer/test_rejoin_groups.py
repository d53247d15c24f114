"""The rejoin rules of a lossless group (buffer/groups.py), driven directly with explicit clock values.

A member whose connection is gone keeps its in-flight messages until the member timeout; the same session
(member id, incarnation, credential) rejoining takes them back; anyone else gets them only once the old member is
released. Acks are idempotent and never mark a message the log does not have yet.
"""

from __future__ import annotations

from photonstream.buffer.groups import Group, Policy
from photonstream.buffer.log import StreamLog

ACK_TIMEOUT = 30.0


def lossless_group(stored: int) -> Group:
    log = StreamLog("exp/1/det")
    for offset in range(stored):
        log.append("event", offset, offset, [b"x"], 0)
    return Group("workers", Policy.parse("lossless"), log, origin=0)


def deliver(group: Group, now: float = 0.0) -> list[tuple[str, int]]:
    """Everything the group sends now, as (member id, offset)."""
    sent = []
    while (pick := group.next_delivery(now, ACK_TIMEOUT)) is not None:
        sent.append((pick[0].member_id, pick[1]))
    return sent


def test_a_detached_member_keeps_its_frames_until_released() -> None:
    group = lossless_group(6)
    group.join(b"a1", "a", 3, now=0.0, incarnation="s1", principal="p")
    assert deliver(group) == [("a", 0), ("a", 1), ("a", 2)]
    assert group.detach(b"a1")  # its connection is gone
    group.join(b"b1", "b", 10, now=0.5, incarnation="s2", principal="p")
    assert deliver(group, 0.5) == [("b", 3), ("b", 4), ("b", 5)]  # not a's frames: they are held
    assert set(group.inflight) == {0, 1, 2, 3, 4, 5} and list(group.held) == [b"a1"]
    assert group.release_held(silent_since=-1.0) == 0  # not silent long enough yet
    assert group.release_held(silent_since=0.1) == 3  # last heard at 0.0: gone for good
    assert not group.held
    assert deliver(group, 2.0) == [("b", 0), ("b", 1), ("b", 2)]
    assert group.redelivered == 3


def test_the_same_session_takes_its_frames_back_after_its_acks() -> None:
    group = lossless_group(8)
    group.join(b"a1", "a", 4, now=0.0, incarnation="s1", principal="p")
    assert deliver(group) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    group.detach(b"a1")
    group.ack([0, 1])  # the acks the rejoin re-sends (they were lost with the connection)
    _, replaced = group.join(b"a2", "a", 4, now=1.0, incarnation="s1", principal="p")
    assert replaced == [b"a1"] and not group.held
    assert group.committed == 2
    # what it had in flight and did not ack comes first, to it, then new messages
    assert deliver(group, 1.0) == [("a", 2), ("a", 3), ("a", 4), ("a", 5)]
    assert all(holder == b"a2" for holder, _ in group.inflight.values())


def test_a_live_old_connection_of_the_same_session_is_replaced_too() -> None:
    group = lossless_group(4)
    group.join(b"a1", "a", 2, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    _, replaced = group.join(b"a2", "a", 2, now=0.2, incarnation="s1", principal="p")  # buffer missed the cut
    assert replaced == [b"a1"] and list(group.members) == [b"a2"]
    assert deliver(group, 0.2) == [("a", 0), ("a", 1)]


def test_another_process_with_the_same_member_id_takes_nothing_over() -> None:
    group = lossless_group(4)
    group.join(b"a1", "a", 2, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.detach(b"a1")
    for identity, incarnation, principal in ((b"x1", "s9", "p"), (b"x2", "s1", "someone-else"), (b"x3", "", "p")):
        _, replaced = group.join(identity, "a", 1, now=0.1, incarnation=incarnation, principal=principal)
        assert replaced == []
    assert list(group.held) == [b"a1"] and group.held[b"a1"].inflight == {0, 1}
    assert deliver(group, 0.1) == [("a", 2), ("a", 3)]  # new members get new messages only


def test_a_connection_that_subscribes_as_another_session_gives_its_old_frames_back() -> None:
    group = lossless_group(3)
    group.join(b"a1", "a", 2, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.detach(b"a1")
    _, replaced = group.join(b"a1", "a", 3, now=0.1, incarnation="s2", principal="p")
    assert replaced == [] and not group.held and list(group.members) == [b"a1"]
    assert deliver(group, 0.1) == [("a", 0), ("a", 1), ("a", 2)]  # back to the group, here to its only member
    assert group.redelivered == 2


def test_duplicate_and_premature_acks_are_harmless() -> None:
    group = lossless_group(4)
    group.join(b"a1", "a", 4, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.ack([0, 1, 0, 1, 1])
    group.ack([0, 1])
    assert group.committed == 2 and set(group.inflight) == {2, 3}
    group.ack([4, 5, 1000])  # not stored yet: ignored, so they are delivered when they come
    assert group.committed == 2 and not group.acked
    for offset in (4, 5):
        group.log.append("event", offset, offset, [b"x"], 0)
    group.ack([2, 3, 2])
    group.members[b"a1"].credit = 4  # the credit that came back with those acks (the service adds it)
    assert deliver(group, 0.1) == [("a", 4), ("a", 5)]
    group.ack([4, 5, 5, 4])
    assert group.committed == 6 and not group.inflight and not group.acked


def test_an_ack_settles_a_frame_wherever_it_is() -> None:
    group = lossless_group(3)
    group.join(b"a1", "a", 3, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.leave(b"a1")  # gone for good: 0, 1, 2 wait for another member
    group.ack([1])  # a late ack from a (another connection) settles 1 before anyone gets it again
    group.join(b"b1", "b", 3, now=0.1, incarnation="s2", principal="p")
    assert deliver(group, 0.1) == [("b", 0), ("b", 2)]


def test_taken_back_frames_count_against_the_rejoined_members_credit() -> None:
    group = lossless_group(10)
    group.join(b"a1", "a", 4, now=0.0, incarnation="s1", principal="p")
    assert deliver(group) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]
    group.detach(b"a1")
    member, _ = group.join(b"a2", "a", 4, now=1.0, incarnation="s1", principal="p")
    assert (member.credit, member.inflight) == (0, {0, 1, 2, 3})  # its window is full with what it gets again
    assert deliver(group, 1.0) == [("a", 0), ("a", 1), ("a", 2), ("a", 3)]  # nothing new beyond its credit
    assert member.credit == 0
    group.ack([0, 1])
    member.give_credit(2)
    assert deliver(group, 1.5) == [("a", 4), ("a", 5)]
    group.ack([2, 3])
    member.give_credit(100)  # more than it was ever sent: capped at its credit less what it holds (4 and 5)
    assert (member.credit, member.inflight) == (2, {4, 5})
    assert deliver(group, 1.5) == [("a", 6), ("a", 7)]


def test_a_taken_back_frame_settled_before_it_is_sent_again_frees_its_slot() -> None:
    group = lossless_group(6)
    group.join(b"a1", "a", 3, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.detach(b"a1")
    member, _ = group.join(b"a2", "a", 3, now=1.0, incarnation="s1", principal="p")
    group.ack([1])  # a late ack (the rejoin's plain CRED): 1 is not sent again, and its slot is free
    assert deliver(group, 1.0) == [("a", 0), ("a", 2), ("a", 3)]
    assert member.credit == 0 and member.inflight == {0, 2, 3}


def test_a_rejoin_with_less_credit_takes_back_only_that_many() -> None:
    group = lossless_group(6)
    group.join(b"a1", "a", 4, now=0.0, incarnation="s1", principal="p")
    deliver(group)
    group.detach(b"a1")
    member, _ = group.join(b"a2", "a", 2, now=1.0, incarnation="s1", principal="p")
    assert (member.credit, member.inflight) == (0, {0, 1})
    group.join(b"b1", "b", 4, now=1.0, incarnation="s2", principal="p")
    assert deliver(group, 1.0) == [("a", 0), ("a", 1), ("b", 2), ("b", 3), ("b", 4), ("b", 5)]
    assert group.rejoins == 1
