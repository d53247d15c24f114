"""Admin requests and consumer results: the access table (ACL), results consumers publish (RES) and the API reads."""

from __future__ import annotations

import time
from typing import Any

import zmq
from msgpack import unpackb as msgpack_unpack

from photonstream.buffer import protocol as P
from photonstream.buffer._state import ADDRESS, MAX_RESULT_BYTES, ServiceState
from photonstream.errors import ConfigError


class Admin(ServiceState):
    """What only the buffer's admins may do, and the results kept for them."""

    def _require_admin(self, principal: str, what: str) -> None:
        if not self.access.is_admin(principal):
            raise P.ProtocolError("forbidden", f"{what}: only the buffer's admins (the API) may do this")

    def _on_acl(self, identity: bytes, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        op = header.get("op")
        body = msgpack_unpack(payload[0].bytes, raw=False) if payload else []
        if op == "register":
            self.access.register(body)
        elif op == "sync":
            self.access.sync(body)
        elif op == "drop":
            self.access.drop([str(a) for a in body])
        else:
            raise ConfigError(f"acl: op {op!r} is not one of register, sync, drop")
        self._reply(identity, P.ACL, {"ok": True, "i": self.instance, "n": len(self.access.addresses())})

    def _on_result(self, identity: bytes, principal: str, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        address = header.get("s")
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise P.ProtocolError("bad-address", f"stream address {address!r} is not experiment/run/stream-id")
        if not self.access.may(principal, address, "consume"):
            raise P.ProtocolError("forbidden", f"{address}: this credential may not publish results for this stream")
        size = sum(len(f) for f in payload)
        if len(payload) != 1 or size > MAX_RESULT_BYTES:
            raise P.ProtocolError("malformed", f"{address}: a result is one frame of at most {MAX_RESULT_BYTES} bytes")
        frames = header.get("f")
        item = {
            "s": address,
            "t": str(header.get("t", "custom"))[:64],
            "g": str(header.get("g", ""))[:128],
            "w": str(header.get("w", ""))[:128],
            "f": [int(frames[0]), int(frames[1])] if isinstance(frames, list | tuple) and len(frames) == 2 else None,
            "at": time.time(),
            "by": principal,
            "d": payload[0].bytes,
        }
        with self._results_lock:
            self._result_id += 1
            item["id"] = self._result_id
            self._results.append(item)
        self._reply(identity, P.RACK, {"id": item["id"], "n": header.get("n")})

    def results_after(self, after: int, limit: int = 500) -> list[dict[str, Any]]:
        """Results with an id above ``after``, oldest first (safe to call from any thread)."""
        with self._results_lock:
            if not self._results or self._results[-1]["id"] <= after:
                return []
            first = self._results[0]["id"]
            start = max(0, after - first + 1)
            return [self._results[i] for i in range(start, min(len(self._results), start + limit))]
