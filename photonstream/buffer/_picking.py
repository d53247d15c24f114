"""How a consumer group picks what goes next, to which member, and undoes a pick whose send did not happen."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from photonstream.buffer._member import Member
from photonstream.buffer._policy import Policy
from photonstream.buffer.log import StreamLog


class Picking:
    """The delivery choices of ``Group`` (groups.py), which holds the fields named here."""

    policy: Policy
    log: StreamLog
    origin: int
    cursor: int
    committed: int
    acked: set[int]
    inflight: OrderedDict[int, tuple[bytes, float]]
    redeliver: deque[int]
    members: dict[bytes, Member]
    held: dict[bytes, Member]
    next_sample_at: float
    delivered: int
    skipped: int
    expired: int
    redelivered: int
    _rr: int
    _resending: bool
    _undo: tuple[str, Member, int, float] | None

    if TYPE_CHECKING:

        def ack(self, offsets: list[int]) -> None: ...

    def unsent(self, member: Member, offset: int) -> None:
        """The message just picked for ``member`` could not be sent (its connection is gone): undo the pick, so it
        is counted neither as delivered nor as redelivered (``in = out + skipped + held`` stays exact) and the next
        member may have it. A taken-back message stays the member's own (it may have had it before its connection
        went): a rejoin takes it back again, the member timeout gives it to the group."""
        how = self._take_back_pick(member, offset)
        if how is None:  # not the last pick (never the case from the service): just let anyone have it
            entry = self.inflight.get(offset)
            if entry is not None and entry[0] == member.identity:
                del self.inflight[offset]
                member.inflight.discard(offset)
                self.redeliver.appendleft(offset)
            return
        if how == "resend":
            return
        if self.policy.lossless:
            self.inflight.pop(offset, None)
            member.inflight.discard(offset)
            if not member.inflight and self.held.get(member.identity) is member:  # held for nothing now
                del self.held[member.identity]
        member.give_credit(1)
        if how == "again":
            self.redeliver.appendleft(offset)
        else:  # from the cursor: it stays next (latest, decimate and sample pick it again)
            self.cursor = offset

    def lost(self, member: Member, offset: int) -> None:
        """The message just picked for ``member`` is no longer in the log (evicted, or its segment unreadable): a
        first delivery counts as expired instead; a lossless group settles it, since nobody can have it now."""
        how = self._take_back_pick(member, offset)
        if how == "cursor":
            self.expired += 1
        self.ack([offset])
        if how is not None:
            member.give_credit(1)

    def _take_back_pick(self, member: Member, offset: int) -> str | None:
        """Undo the counts of the last pick if it was ``offset`` for ``member``; returns how it was picked."""
        undo, self._undo = self._undo, None
        if undo is None or undo[1] is not member or undo[2] != offset:
            return None
        how = undo[0]
        self.delivered -= 1
        member.delivered -= 1
        if how != "cursor":
            self.redelivered -= 1
        if how == "cursor":
            self.next_sample_at = undo[3]
        return how

    def _member_with_credit(self) -> Member | None:
        members = list(self.members.values())
        n = len(members)
        for i in range(n):
            member = members[(self._rr + i) % n]
            if member.credit > 0 and not member.end_sent:
                self._rr = (self._rr + i + 1) % n
                return member
        return None

    # -- choosing what goes next --------------------------------------------------------------------------
    def _skip_expired(self) -> None:
        first = self.log.first
        if self.cursor < first:
            self.expired += first - self.cursor
            self.cursor = first
        if self.policy.lossless and self.committed < first:
            self.committed = first
            self.acked = {o for o in self.acked if o >= first}

    def _next_offset(self, now: float) -> tuple[int, bool] | None:
        """The next offset for the group, and whether it was sent before (a redelivery)."""
        log = self.log
        policy = self.policy
        if policy.lossless:
            while self.redeliver:
                o = self.redeliver.popleft()
                if o >= self.committed and o not in self.acked and o >= log.first:
                    return o, True
            self._skip_expired()
            while self.cursor < log.head:
                o = self.cursor
                self.cursor += 1
                if o not in self.acked:
                    return o, False
            return None
        self._skip_expired()
        if policy.kind == "decimate":
            candidate = self.cursor + (self.origin - self.cursor) % policy.every
            if candidate >= log.head:
                return None
            self.skipped += candidate - self.cursor
            self.cursor = candidate + 1
            return candidate, False
        if policy.kind == "sample" and now < self.next_sample_at:
            return None
        if self.cursor >= log.head:
            return None
        newest = log.head - 1
        self.skipped += newest - self.cursor
        self.cursor = newest + 1
        if policy.kind == "sample":
            self.next_sample_at = now + 1.0 / policy.rate
        return newest, False

    def next_delivery(self, now: float, ack_timeout: float) -> tuple[Member, int] | None:
        """Pick the next (member, offset) to send, or None; updates cursors, credit, counts and in-flight state
        (``unsent`` and ``lost`` undo them if the send does not happen)."""
        self._undo = None
        if self._resending:
            pick = self._next_resend(now, ack_timeout)
            if pick is not None:
                return pick
        member = self._member_with_credit()
        if member is None:
            return None
        sample_at = self.next_sample_at
        picked = self._next_offset(now)
        if picked is None:
            return None
        offset, again = picked
        self._undo = ("again" if again else "cursor", member, offset, sample_at)
        member.credit -= 1
        member.delivered += 1
        self.delivered += 1
        self.redelivered += int(again)
        if self.policy.lossless:
            self.inflight[offset] = (member.identity, now + ack_timeout)
            self.inflight.move_to_end(offset)
            member.inflight.add(offset)
        return member, offset

    def _next_resend(self, now: float, ack_timeout: float) -> tuple[Member, int] | None:
        """A message taken over from a member's previous connection, to that member (its credit was taken when
        the message was taken back; one settled or expired meanwhile frees its slot again)."""
        waiting = False
        for member in self.members.values():
            while member.resend:
                if member.end_sent:
                    waiting = True
                    break
                offset = member.resend.popleft()
                entry = self.inflight.pop(offset, None)
                if entry is not None and entry[0] != member.identity:  # meanwhile expired and given to another
                    self.inflight[offset] = entry
                if entry is None or entry[0] != member.identity:
                    member.give_credit(1)
                    continue
                self.inflight[offset] = (member.identity, now + ack_timeout)  # at the end: the newest deadline
                self._undo = ("resend", member, offset, self.next_sample_at)
                member.delivered += 1
                self.delivered += 1
                self.redelivered += 1
                return member, offset
        self._resending = waiting
        return None

    def wake_at(self) -> float | None:
        """When a sample group may send again (for the service's poll timeout)."""
        if self.policy.kind == "sample" and self.cursor < self.log.head and self.members:
            return self.next_sample_at
        return None
