"""Consumer groups: one cursor and one loss policy per group, members sharing its messages.

Every group sees every message of a stream (broadcast); the members of one group share them (work-sharing).
The group decides *which* offset goes next and to *which* member; the service does the sending.

Policies
    lossless      every message, in order; each must be acked; unacked messages are redelivered after the ack
                  timeout or when their member goes away; the group's committed offset holds the log's retention
    latest        the newest message whenever a member has credit; older ones are skipped
    decimate:N    offsets origin, origin+N, origin+2N, ... (every Nth message)
    sample:RATE   the newest message at most RATE times per second
Only lossless groups hold back retention and the producer; the others count what they skip (``skipped``) and what
was evicted before they got to it (``expired``), so loss is always reported.

Members that go away and come back (lossless)
    A member leaves by saying goodbye (its unacked messages go back to the group at once), by silence longer than
    the member timeout, or by losing its connection. A lost connection only *detaches* the member (``held``): it
    gets nothing more, but its in-flight messages stay its own until it has been silent for the member timeout, and
    only then go back to the group. A subscription that rejoins within that time (same member id, same
    ``incarnation``, the random session of one ``Subscription`` object, and the same credential) takes the old
    member's place: the acks it re-sends settle what its application already had (its last message included: a
    subscription acks it before it reads anything more), and the rest of its in-flight messages are sent to it again
    before anything new. So a message the application has is never given to another member of the group because an
    ack or a connection was lost, as long as the member is back within the member timeout; after that it is
    at-least-once (another member gets it; a late ack still settles it). A member id reused by another process
    (another incarnation) is a separate member and never touches the first one's messages.

    Acks are idempotent: an ack of an offset already settled, or held by another member, only settles it; an ack
    of an offset the log does not have yet is ignored (it could only come from another incarnation of the stream).

Credit
    A member never has more than the credit it subscribed with out at once: what it holds in flight counts against
    it, the messages a rejoin takes back included (they are sent again without taking more), and credit it returns
    is capped at that credit less what it holds, so a return for a message sent to an earlier connection cannot
    widen its window.

Accounting
    ``delivered`` counts sends that happened, ``redelivered`` those of a message the group had sent before, so
    ``delivered - redelivered`` messages went out once. A pick whose send fails (the member's connection is gone)
    is undone, and one whose message is gone from the log counts as expired instead; so for a group that started
    at the beginning, head = (delivered - redelivered) + skipped + expired + (head - cursor) at every moment (an
    offset acked before the group sent it, as a restarted durable buffer may hear, is the one thing in none of them).
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from photonstream.buffer._member import Member
from photonstream.buffer._picking import Picking
from photonstream.buffer._policy import Policy, parse_start, start_offset
from photonstream.buffer.log import StreamLog

__all__ = ["Group", "Member", "Policy", "monotonic", "parse_start", "start_offset"]


@dataclass(eq=False)
class Group(Picking):
    name: str
    policy: Policy
    log: StreamLog
    origin: int  # where the group started (decimate counts from here)
    cursor: int = -1  # next offset to consider (-1: the origin)
    committed: int = -1  # lossless: every offset below is acked (-1: the cursor)
    acked: set[int] = field(default_factory=set)  # lossless: acked offsets at or above ``committed``
    inflight: OrderedDict[int, tuple[bytes, float]] = field(default_factory=OrderedDict)  # offset → holder, deadline
    redeliver: deque[int] = field(default_factory=deque)
    members: dict[bytes, Member] = field(default_factory=dict)
    held: dict[bytes, Member] = field(default_factory=dict)  # connection gone: in-flight kept until member timeout
    calibrations_sent: int = 0  # how many of the stream's calibration records the group has passed
    next_sample_at: float = 0.0
    delivered: int = 0
    bytes_out: int = 0
    skipped: int = 0
    expired: int = 0
    redelivered: int = 0  # sends of a message the group had sent before (ack timeout, member gone, rejoin)
    rejoins: int = 0  # rejoins that took back a held member (its connection was gone) and its messages
    end_sent: bool = False  # the end message went to the members the group had then
    _rr: int = 0
    _resending: bool = False  # some member has taken-over messages to get again
    _undo: tuple[str, Member, int, float] | None = None  # the last pick (how, to whom, offset, next_sample_at)

    def __post_init__(self) -> None:
        if self.cursor < 0:
            self.cursor = self.origin
        if self.committed < 0:
            self.committed = self.cursor
        self.calibrations_sent = sum(1 for o, _ in self.log.calibrations if o <= self.cursor)

    # -- members ------------------------------------------------------------------------------------------
    def session_of(self, member_id: str, incarnation: str, principal: str) -> list[Member]:
        """The members (live or held) a subscription with this session would take over."""
        if not incarnation:
            return []
        everyone = (*self.members.values(), *self.held.values())
        return [m for m in everyone if m.same_session(member_id, incarnation, principal)]

    def join(
        self, identity: bytes, member_id: str, credit: int, now: float, *, incarnation: str = "", principal: str = ""
    ) -> tuple[Member, list[bytes]]:
        """Add a member; one of the same session (a rejoin) is replaced and its in-flight messages become the new
        member's, to be sent again. They count against its credit from now on (at most ``credit`` of them are taken
        back, the oldest; the rest go back to the group). Returns the member and the identities it replaced (other
        than its own)."""
        previous = self.session_of(member_id, incarnation, principal)
        for stale in (self.members.get(identity), self.held.get(identity)):
            if stale is not None and stale not in previous:  # this connection as another session: it left
                self._give_back(stale)
        member = Member(identity, member_id, credit, now, incarnation, principal, capacity=credit)
        if any(self.held.get(old.identity) is old for old in previous):
            self.rejoins += 1
        taken: set[int] = set()
        for old in previous:
            self.members.pop(old.identity, None)
            self.held.pop(old.identity, None)
            taken |= {o for o in old.inflight if o in self.inflight}
        for offset in sorted(taken):
            if len(member.inflight) < credit:
                self.inflight[offset] = (identity, self.inflight[offset][1])
                member.inflight.add(offset)
                member.resend.append(offset)
            else:  # more than its window now (it subscribed with less credit): anyone may have these
                del self.inflight[offset]
                self.redeliver.append(offset)
        member.credit = credit - len(member.inflight)
        self._resending = self._resending or bool(member.resend)
        self.members[identity] = member
        return member, [m.identity for m in previous if m.identity != identity]

    def leave(self, identity: bytes) -> int:
        """Remove a member (live or held); its unacked messages go back to the group. Returns how many."""
        member = self.members.get(identity) or self.held.get(identity)
        return 0 if member is None else self._give_back(member)

    def _give_back(self, member: Member) -> int:
        if self.members.get(member.identity) is member:
            del self.members[member.identity]
        if self.held.get(member.identity) is member:
            del self.held[member.identity]
        back = sorted(o for o in member.inflight if self.inflight.pop(o, None) is not None)
        self.redeliver.extend(back)
        return len(back)

    def detach(self, identity: bytes) -> bool:
        """The member's connection is gone: it gets nothing more, but keeps its in-flight messages (see the module
        docstring) until ``release_held`` finds it silent for the member timeout."""
        member = self.members.pop(identity, None)
        if member is None:
            return False
        member.resend.clear()
        if member.inflight:
            self.held[identity] = member
        return True

    def release_held(self, silent_since: float) -> int:
        """Held members last heard before ``silent_since`` are gone for good: their messages go back to the group."""
        gone = [identity for identity, m in self.held.items() if m.last_seen < silent_since]
        return sum(self._give_back(self.held[identity]) for identity in gone)

    def _holder(self, identity: bytes) -> Member | None:
        return self.members.get(identity) or self.held.get(identity)

    # -- acks and redelivery -----------------------------------------------------------------------------
    def ack(self, offsets: list[int]) -> None:
        if not self.policy.lossless:
            return
        head = self.log.head
        for o in offsets:
            if o >= head:  # never stored here: not an ack of this stream's message
                continue
            entry = self.inflight.pop(o, None)
            if entry is not None:
                holder = self._holder(entry[0])
                if holder is not None:
                    holder.inflight.discard(o)
            if o >= self.committed:
                self.acked.add(o)
        while self.committed in self.acked:
            self.acked.discard(self.committed)
            self.committed += 1

    def expire_unacked(self, now: float) -> int:
        """Messages not acked in time go back to the group (to whichever member has credit next)."""
        count = 0
        while self.inflight:
            offset, (identity, deadline) = next(iter(self.inflight.items()))
            if deadline > now:
                break
            del self.inflight[offset]
            holder = self._holder(identity)
            if holder is not None:
                holder.inflight.discard(offset)
            self.redeliver.append(offset)
            count += 1
        return count

    # -- end of stream ------------------------------------------------------------------------------------
    def drained(self) -> bool:
        """True once the stream has ended and this group has nothing more to send (or to wait acks for)."""
        log = self.log
        if log.end is None:
            return False
        self._skip_expired()
        if self.policy.lossless:
            return (
                self.cursor >= log.head
                and not self.inflight
                and not any(o not in self.acked and o >= self.committed for o in self.redeliver)
            )
        next_decimated = self.cursor + (self.origin - self.cursor) % self.policy.every
        if self.policy.kind == "decimate" and next_decimated >= log.head:
            self.skipped += max(0, log.head - self.cursor)
            self.cursor = max(self.cursor, log.head)
        return self.cursor >= log.head

    @property
    def retain_from(self) -> int | None:
        """The oldest offset this group still needs (lossless only)."""
        return self.committed if self.policy.lossless else None

    @property
    def lag(self) -> int:
        return self.log.head - (self.committed if self.policy.lossless else self.cursor)

    # -- persistence --------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "policy": str(self.policy),
            "origin": self.origin,
            "cursor": self.cursor,
            "committed": self.committed,
            "acked": sorted(self.acked),
            "delivered": self.delivered,
            "bytes_out": self.bytes_out,
            "skipped": self.skipped,
            "expired": self.expired,
            "redelivered": self.redelivered,
            "rejoins": self.rejoins,
        }

    @classmethod
    def from_state(cls, log: StreamLog, d: dict[str, Any]) -> Group:
        policy = Policy.parse(d["policy"])
        committed = int(d["committed"])
        group = cls(
            name=str(d["name"]),
            policy=policy,
            log=log,
            origin=int(d["origin"]),
            cursor=committed if policy.lossless else int(d["cursor"]),
            committed=committed,
            acked={int(o) for o in d.get("acked", [])},
        )
        group.delivered = int(d.get("delivered", 0))
        group.bytes_out = int(d.get("bytes_out", 0))
        group.skipped = int(d.get("skipped", 0))
        group.expired = int(d.get("expired", 0))
        group.redelivered = int(d.get("redelivered", 0))
        group.rejoins = int(d.get("rejoins", 0))
        return group


def monotonic() -> float:
    return time.monotonic()
