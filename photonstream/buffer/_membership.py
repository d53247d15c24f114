"""Membership of consumer groups: SUB (joining, quotas, rejoining), heartbeats, goodbyes, and members that leave,
time out, lose their connection or their grant."""

from __future__ import annotations

import secrets
from typing import Any

from photonstream.buffer import protocol as P
from photonstream.buffer._state import (
    ADDRESS,
    MAX_ASKED_TO_REJOIN,
    MAX_MEMBER_ID,
    ServiceState,
    Stream,
    _offsets,
)
from photonstream.buffer.groups import Group, Policy, monotonic, parse_start, start_offset
from photonstream.buffer.log import StreamLog
from photonstream.errors import ConfigError


class Membership(ServiceState):
    """Who belongs to which group of which stream."""

    def _on_subscribe(self, identity: bytes, principal: str, header: dict[str, Any]) -> None:
        address = header.get("s")
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise ConfigError(f"stream: {address!r} is not experiment/run/stream-id")
        if not self.access.may(principal, address, "consume"):
            raise P.ProtocolError("forbidden", f"{address}: this credential may not read this stream")
        group_name = str(header.get("g", "default"))
        if not group_name or len(group_name) > 128:
            raise ConfigError("group: must be 1-128 characters")
        policy = Policy.parse(str(header.get("pol", "lossless")))
        start = parse_start(header.get("st", "beginning"))
        member_id = header.get("m") or f"anonymous-{secrets.token_hex(6)}"  # never the connection's routing id
        if not isinstance(member_id, str) or len(member_id) > MAX_MEMBER_ID:
            raise ConfigError(f"member: must be a string of at most {MAX_MEMBER_ID} characters")
        incarnation = header.get("i")
        incarnation = incarnation if isinstance(incarnation, str) and len(incarnation) <= 64 else ""
        acked = _offsets(header, "a")
        credit = max(1, min(int(header.get("c", 16)), P.MAX_CREDIT))
        stream = self.streams.get(address)
        if stream is None:
            stream = Stream(StreamLog(address))  # a consumer may come before the producer
            self.streams[address] = stream
        group = stream.groups.get(group_name)
        quota = self.settings.max_groups_per_stream if group is None else self.settings.max_members_per_group
        replacing = set() if group is None else self._replaced_by(identity, group, member_id, incarnation, principal)
        used = len(stream.groups) if group is None else len(group.members) - len(replacing)
        if used >= quota:
            what = "max_groups_per_stream: the stream has" if group is None else "max_members_per_group: the group has"
            unit = "consumer groups" if group is None else "members"
            raise P.ProtocolError("quota", f"{address}: {what} {used} {unit} (limit {quota})")
        if group is None:
            group = Group(group_name, policy, stream.log, origin=start_offset(stream.log, start))
            stream.groups[group_name] = group
            stream.groups_dirty = True
        elif group.policy != policy:
            raise ConfigError(
                f"policy: group {group_name!r} of {address} already uses policy {group.policy}, not {policy}"
            )
        self._asked_to_rejoin.pop(identity, None)
        entry = self._members.get(identity)
        if entry is not None and entry[1] is not group:
            self._forget_member(identity)
        same_stream = stream.started and header.get("e") == stream.epoch
        if same_stream and acked:
            self._settle(stream, group, acked)
        now = monotonic()
        _, replaced = group.join(identity, member_id, credit, now, incarnation=incarnation, principal=principal)
        for old in replaced:
            self._members.pop(old, None)
            self._principals.pop(old, None)
        self._members[identity] = (stream, group)
        self._principals[identity] = principal
        if stream.started:
            self._greet(stream, group, identity)
            self._dispatch(stream)
        elif stream.log.end is not None:  # ended before it opened: nothing to read but the end
            self._send_end(stream, group)

    @staticmethod
    def _replaced_by(identity: bytes, group: Group, member_id: str, incarnation: str, principal: str) -> set[bytes]:
        """The live members of ``group`` a subscription replaces (its own, or its session's older connection)."""
        mine = {m.identity for m in group.session_of(member_id, incarnation, principal)} | {identity}
        return mine & group.members.keys()

    def _greet_waiting_members(self, stream: Stream) -> None:
        for group in stream.groups.values():
            for identity in list(group.members):
                self._greet(stream, group, identity)
        self._dispatch(stream)

    def _greet(self, stream: Stream, group: Group, identity: bytes) -> None:
        """Send a (new) member the start message and the calibration in force for its group."""
        log = stream.log
        assert log.start is not None
        start = {"s": log.address, "g": group.name, "z": log.serializer, "o": group.cursor, "pol": str(group.policy),
                 "e": stream.epoch}  # fmt: skip
        if not self._reply(identity, P.START, start, log.start.frames or []):
            return
        if group.calibrations_sent:
            offset, record = log.calibrations[group.calibrations_sent - 1]
            self._reply(identity, P.CAL, {"o": offset, "q": record.seq}, record.frames or [])

    def _drop_unauthorized_members(self) -> None:
        """After a grant change (a stream's owner revoked): members that may no longer read their stream leave, told
        why, and get nothing more."""
        for identity, (stream, _) in list(self._members.items()):
            address = stream.log.address
            if not self.access.may(self._principals.get(identity, ""), address, "consume"):
                self._forget_member(identity)
                self._dispatch_later.add(address)
                self._refuse(identity, "forbidden", f"{address}: this credential may no longer read this stream")

    def _held_by(self, identity: bytes) -> tuple[Stream, Group] | None:
        """The stream and group where this connection's member is set aside (its connection seemed gone)."""
        return next(((s, g) for s in self.streams.values() for g in s.groups.values() if identity in g.held), None)

    def _on_heartbeat(self, identity: bytes) -> None:
        entry = self._members.get(identity)
        if entry is None or identity not in entry[1].members:
            self._ask_to_rejoin(identity)
            return
        entry[1].members[identity].last_seen = monotonic()
        self._reply(identity, P.HB, {})

    def _ask_to_rejoin(self, identity: bytes) -> None:
        """Tell an unknown consumer connection to subscribe again, once: what it queued while it was cut off (a
        heartbeat every beat) arrives in a burst, and one REJOIN each would make it subscribe again and again."""
        if identity in self._asked_to_rejoin:
            return
        self._asked_to_rejoin[identity] = monotonic()
        while len(self._asked_to_rejoin) > MAX_ASKED_TO_REJOIN:
            self._asked_to_rejoin.popitem(last=False)
        self._reply(identity, P.REJOIN, {})

    def _on_bye(self, identity: bytes) -> None:
        entry = self._forget_member(identity)
        if entry is None:  # set aside already: a send to it failed while its goodbye was on its way
            entry = self._held_by(identity)
            if entry is not None:
                entry[1].leave(identity)  # it left: its messages go to the group now, not at the member timeout
        if entry is not None:
            self._dispatch(entry[0])

    def _forget_member(self, identity: bytes) -> tuple[Stream, Group] | None:
        self._principals.pop(identity, None)
        entry = self._members.pop(identity, None)
        if entry is not None:
            entry[1].leave(identity)
        return entry

    def _member_gone(self, identity: bytes) -> None:
        """Its connection is gone: detach it (its unacked messages wait for a rejoin until the member timeout)."""
        self._principals.pop(identity, None)
        entry = self._members.pop(identity, None)
        if entry is not None:
            entry[1].detach(identity)
            self._dispatch_later.add(entry[0].log.address)
