"""Dispatch to consumer groups: credit and acks (CRED), delivery and redelivery, calibrations and the end."""

from __future__ import annotations

import logging
from typing import Any

from photonstream.buffer import protocol as P
from photonstream.buffer._state import READ_WARN_EVERY_S, ServiceState, Stream
from photonstream.buffer.groups import Group, monotonic


class Dispatch(ServiceState):
    """Sending each group's members what their credit allows, and settling their acks."""

    def _on_credit(self, identity: bytes, header: dict[str, Any]) -> None:
        epoch = header.get("e")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise P.ProtocolError("malformed", "CRED field 'e' must be the stream epoch (an integer) or absent")
        entry = self._members.get(identity)
        if entry is None or identity not in entry[1].members:
            held = self._held_by(identity)
            if held is not None:  # set aside (a send to it failed) while its acks were on their way: they count
                self._settle_acks(*held, header, epoch)
                self._dispatch(held[0])
            self._ask_to_rejoin(identity)
            return
        stream, group = entry
        member = group.members[identity]
        member.last_seen = monotonic()
        self._settle_acks(stream, group, header, epoch)
        member.give_credit(int(header.get("c", 0)))  # after the acks: what they settle no longer counts against it
        self._dispatch(stream)

    def _settle_acks(self, stream: Stream, group: Group, header: dict[str, Any], epoch: int | None) -> None:
        acked = header.get("a")
        if acked and group.policy.lossless and (epoch is None or epoch == stream.epoch):
            self._settle(stream, group, [int(o) for o in acked])  # acks of another opening name other messages

    def _settle(self, stream: Stream, group: Group, offsets: list[int]) -> None:
        """Acks (idempotent); a moved committed offset is persisted and may unblock the producer."""
        before = group.committed
        group.ack(offsets)
        if group.committed != before:
            stream.groups_dirty = True
            if stream.blocked:
                self._enforce(stream)

    def _dispatch(self, stream: Stream) -> None:
        if not stream.started:
            return
        log = stream.log
        now = monotonic()
        ack_timeout = self.settings.ack_timeout_s
        for group in list(stream.groups.values()):
            while True:
                pick = group.next_delivery(now, ack_timeout)
                if pick is None:
                    break
                member, offset = pick
                record = log.get(offset)
                if record is None:
                    group.lost(member, offset)
                    continue
                self._send_calibrations(stream, group, upto=offset)
                try:
                    frames = log.payload(record)
                except KeyError as exc:  # released from memory with nowhere to go: nobody can have it now
                    logging.getLogger("photonstream.buffer").warning(  # ``log`` is the stream's here
                        "buffer: %s offset %d lost for group %s: %s", log.address, offset, group.name, exc
                    )
                    group.lost(member, offset)
                    continue
                except OSError as exc:  # its segment cannot be read now: keep it, the next tick tries again
                    if now - stream.read_warned_at > READ_WARN_EVERY_S:
                        stream.read_warned_at = now
                        logging.getLogger("photonstream.buffer").warning(
                            "buffer: %s offset %d not readable for group %s (will retry): %s",
                            log.address, offset, group.name, exc,
                        )  # fmt: skip
                    group.unsent(member, offset)
                    break
                header = {"o": offset, "q": record.seq, "k": record.kind, "h": log.head, "x": group.skipped}
                if self._reply(member.identity, P.MSG, header, frames):
                    group.bytes_out += record.nbytes
                else:  # not sent: counted neither as delivered nor as redelivered, and the next member may have it
                    group.unsent(member, offset)
            if group.drained():
                self._send_end(stream, group)
        if self._dispatch_later:
            pending = [self.streams[a] for a in self._dispatch_later if a in self.streams]
            self._dispatch_later = set()
            for other in pending:
                self._dispatch(other)

    def _send_calibrations(self, stream: Stream, group: Group, upto: int | None) -> None:
        calibrations = stream.log.calibrations
        while group.calibrations_sent < len(calibrations):
            offset, record = calibrations[group.calibrations_sent]
            if upto is not None and offset > upto:
                break
            group.calibrations_sent += 1
            for identity in list(group.members):
                self._reply(identity, P.CAL, {"o": offset, "q": record.seq}, record.frames or [])

    def _send_end(self, stream: Stream, group: Group) -> None:
        log = stream.log
        assert log.end is not None
        group.end_sent = True
        waiting = [m for m in group.members.values() if not m.end_sent]
        if not waiting:
            return
        self._send_calibrations(stream, group, upto=None)
        header = {"o": log.head, "x": group.skipped, "r": group.redelivered, "e": group.expired}
        if stream.ended_by is not None:
            header["rs"], header["rm"] = stream.ended_by
        for member in waiting:
            member.end_sent = True
            self._reply(member.identity, P.END, header, log.end.frames or [])
