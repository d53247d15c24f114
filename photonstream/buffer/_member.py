"""A member of a consumer group: one subscription's connection, its credit and what it holds in flight."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Member:
    identity: bytes
    member_id: str
    credit: int
    last_seen: float
    incarnation: str = ""  # the subscription's session ("": an older client, never taken over)
    principal: str = ""  # who it authenticated as: only the same credential may take its place
    capacity: int = 0  # the credit it subscribed with: never more than this out to it at once
    inflight: set[int] = field(default_factory=set)
    resend: deque[int] = field(default_factory=deque)  # taken over from its previous connection: sent again first
    delivered: int = 0
    end_sent: bool = False

    def same_session(self, member_id: str, incarnation: str, principal: str) -> bool:
        mine = (self.member_id, self.incarnation, self.principal)
        return bool(incarnation) and mine == (member_id, incarnation, principal)

    def give_credit(self, count: int) -> None:
        """Credit the consumer returned, kept within its capacity less what it holds in flight here: a return for
        a message not counted against this connection (one sent before a rejoin) cannot widen its window."""
        self.credit = max(0, min(self.credit + max(0, count), self.capacity - len(self.inflight)))
