"""The service's state as numbers: per stream and group, messages and bytes, rates, lag, fill, losses."""

from __future__ import annotations

import time
from typing import Any

import zmq

from photonstream.buffer._state import ServiceState


class Stats(ServiceState):
    """Stats for the API, ``photonstream buffer stats`` and the metrics exporter."""

    def stats(self) -> dict[str, Any]:
        """The state as of the last second (safe to call from any thread)."""
        return self._snapshot or {"service": {"endpoint": self.endpoint}, "streams": {}}

    def _stats_for(self, principal: str) -> dict[str, Any]:
        """The state, limited to the streams ``principal`` may see (admins: all)."""
        state = self.stats_now()
        if not self.access.is_admin(principal):
            visible = {a: v for a, v in state["streams"].items() if self.access.visible(principal, a)}
            state = {"service": {"endpoint": self.endpoint}, "streams": visible}
        return state

    def stats_now(self) -> dict[str, Any]:
        """Per stream and group: messages and bytes in and out, rates, lag, memory and disk fill, losses."""
        s = self.settings
        now = time.monotonic()
        streams: dict[str, Any] = {}
        for address, stream in self.streams.items():
            log = stream.log
            rate_msgs, rate_bytes = self._rate(f"in:{address}", now, log.messages_in, log.bytes_in)
            groups: dict[str, Any] = {}
            for name, g in stream.groups.items():
                g_msgs, g_bytes = self._rate(f"out:{address}:{name}", now, g.delivered, g.bytes_out)
                groups[name] = {
                    "policy": str(g.policy),
                    "members": len(g.members),
                    "held_members": len(g.held),
                    "rejoins": g.rejoins,
                    "cursor": g.cursor,
                    "committed": g.committed if g.policy.lossless else g.cursor,
                    "lag": g.lag,
                    "delivered": g.delivered,
                    "bytes_out": g.bytes_out,
                    "rate_msgs": g_msgs,
                    "rate_bytes": g_bytes,
                    "skipped": g.skipped,
                    "expired": g.expired,
                    "redelivered": g.redelivered,
                    "inflight": len(g.inflight),
                    "member_credit": {m.member_id: m.credit for m in g.members.values()},
                    "member_inflight": {m.member_id: len(m.inflight) for m in g.members.values()},
                    "ended": g.end_sent,
                }
            streams[address] = {
                "durable": log.durable,
                "serializer": log.serializer,
                "started": stream.started,
                "ended": log.end is not None,
                "ended_by": list(stream.ended_by) if stream.ended_by else None,
                "first": log.first,
                "head": log.head,
                "messages_in": log.messages_in,
                "bytes_in": log.bytes_in,
                "rate_msgs": rate_msgs,
                "rate_bytes": rate_bytes,
                "memory_bytes": log.mem_bytes,
                "memory_fill": log.mem_bytes / s.memory_per_stream,
                "disk_bytes": log.disk_bytes,
                "disk_fill": log.disk_bytes / s.disk_per_stream if s.disk_per_stream else None,
                "blocked": stream.blocked,
                "producers": len(stream.producers),
                "producer_errors": stream.errors,
                "groups": groups,
            }
        return {
            "service": {
                "endpoint": self.endpoint,
                "data_dir": str(s.data_dir) if s.data_dir else None,
                "uptime_s": round(time.time() - self.started_at, 3),
                "memory_bytes": self._memory_total(),
                "memory_budget": s.memory_total,
                "disk_bytes": self._disk_total(),
                "disk_budget": s.disk_total,
                "streams": len(self.streams),
                "members": len(self._members),
                "instance": self.instance,
                "listeners": [{"security": sec, "endpoint": ep} for sec, ep in self._listener_endpoints()],
                "auth_refused": self.access.refused,
                "rejected": dict(self.rejected),
            },
            "streams": streams,
        }

    def _listener_endpoints(self) -> list[tuple[str, str]]:
        pairs = zip(self._securities, self._sockets, strict=True)
        return [(security, sock.getsockopt_string(zmq.LAST_ENDPOINT)) for security, sock in pairs]

    def _rate(self, key: str, now: float, messages: int, nbytes: int) -> tuple[float, float]:
        previous = self._rates.get(key)
        self._rates[key] = (now, messages, nbytes)
        if previous is None or now - previous[0] < 1e-3:
            return 0.0, 0.0
        dt = now - previous[0]
        return round((messages - previous[1]) / dt, 3), round((nbytes - previous[2]) / dt, 1)
