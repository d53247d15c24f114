"""The service's I/O loop: polling, routing each command to its handler, timers, and other threads' calls."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import zmq
from msgpack import packb as msgpack_pack

from photonstream.buffer import protocol as P
from photonstream.buffer._state import ServiceError, ServiceState
from photonstream.buffer.groups import monotonic
from photonstream.buffer.routing import ANNOUNCED_ID_REFUSAL, is_generated
from photonstream.errors import ConfigError

log = logging.getLogger("photonstream.buffer")


class Loop(ServiceState):
    """The loop that serves every stream: one thread, the only one that touches the streams."""

    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        if self._written is not None:
            poller.register(self._written, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        sockets = list(enumerate(self._sockets))
        self._loop_thread = threading.get_ident()
        try:
            self._serve(poller, sockets)
        finally:
            self._loop_thread = None

    def _serve(self, poller: zmq.Poller, sockets: list[tuple[int, zmq.Socket]]) -> None:
        while not self._stop.is_set():
            self._run_calls()
            if poller.poll(self._poll_timeout_ms()):
                self._drain_written()
                self._answer_zap()
                for index, sock in sockets:
                    for _ in range(64):
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._apply_grant_change()  # before a credit could send a revoked member more
                        self._on_message(parts, index)
            self._flush_producer_acks()
            now = monotonic()
            if now >= self._next_tick:
                self._tick(now)
                self._next_tick = now + 0.05

    def _poll_timeout_ms(self) -> int:
        timeout = 0.05
        now = monotonic()
        for stream in self.streams.values():
            for group in stream.groups.values():
                at = group.wake_at()
                if at is not None:
                    timeout = min(timeout, max(0.0, at - now))
        return max(0, int(timeout * 1000))

    def _on_message(self, parts: list[zmq.Frame], index: int = 0) -> None:
        # the listener's index in front of the routing id: replies go out on the socket the peer came in on
        identity = bytes((index,)) + parts[0].bytes
        try:
            if not is_generated(parts[0].bytes):  # see routing.py: only ids libzmq generated act here
                raise P.ProtocolError("announced-id", ANNOUNCED_ID_REFUSAL)
            if len(parts) < 2:
                raise P.ProtocolError("protocol", "not a photonstream buffer message (protocol PSB1)")
            command, header = P.open_envelope(parts[1])
            principal = self._principal(parts[1], index)
            if command == P.PUB:
                self._on_publish(identity, principal, header, parts[2:])
            elif command == P.CRED:
                self._on_credit(identity, header)
            elif command == P.SUB:
                self._on_subscribe(identity, principal, header)
            elif command == P.HB:
                self._on_heartbeat(identity)
            elif command == P.BYE:
                self._on_bye(identity)
            elif command == P.STATS:
                self._reply(identity, P.STATS, None, [json.dumps(self._stats_for(principal)).encode()])
            elif command == P.RES:
                self._on_result(identity, principal, header, parts[2:])
            elif command == P.RESULTS:
                self._require_admin(principal, "results")
                after, limit = int(header.get("after", 0)), max(1, min(int(header.get("limit", 500)), 5000))
                items = self.results_after(after, limit)
                reply = {"i": self.instance, "last": self._result_id}
                self._reply(identity, P.RESULTS, reply, [msgpack_pack(items, use_bin_type=True)])
            elif command == P.ACL:
                self._require_admin(principal, "acl")
                self._on_acl(identity, header, parts[2:])
            elif command == P.FIN:
                self._require_admin(principal, "fin")
                addresses = header.get("s")
                if not isinstance(addresses, list):
                    raise ConfigError("fin: s must be a list of stream addresses")
                reason, message = self._checked_end(addresses, header.get("r"), header.get("m", ""))
                ended = sum(self._end_stream(a, reason, message) for a in addresses)
                self._reply(identity, P.FIN, {"ok": True, "n": ended})
            else:
                raise P.ProtocolError("unknown-command", f"unknown command {command!r}")
        except P.ProtocolError as exc:
            self._refuse(identity, exc.code, str(exc))
        except ConfigError as exc:
            self._refuse(identity, "bad-request", str(exc))
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:  # e.g. int(inf) in a header field
            self._refuse(identity, "malformed", f"malformed request ({type(exc).__name__}: {exc})")
        except Exception as exc:  # one peer's message must never stop the loop that serves every stream
            log.exception("buffer: unexpected error handling a message")
            self._refuse(identity, "internal", f"internal error ({type(exc).__name__}); the message was dropped")

    def _in_loop(self, call: Callable[[], int], timeout_s: float) -> int:
        """Run ``call`` in the I/O loop's thread (the only one that touches streams) and return its result."""
        if self._loop_thread is None or self._loop_thread == threading.get_ident():
            return call()  # the loop is not running (or this is it): nobody else touches the streams
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        self._calls.put(run)
        if not done.wait(timeout_s):
            raise ServiceError(f"buffer: the service loop did not answer within {timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return int(box["value"])

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            self._apply_grant_change()  # a grant withdrawn before the call was queued counts first (an end, say)
            call()

    def _apply_grant_change(self) -> None:
        """Drop the members a new access snapshot no longer admits (a cheap identity check when none came)."""
        if self.access.snapshot is not self._access_seen:
            self._access_seen = self.access.snapshot
            self._drop_unauthorized_members()

    def _tick(self, now: float) -> None:
        self._apply_grant_change()
        member_deadline = now - self.settings.member_timeout_s
        while self._asked_to_rejoin and next(iter(self._asked_to_rejoin.values())) < member_deadline:
            self._asked_to_rejoin.popitem(last=False)
        for stream in list(self.streams.values()):
            touched = False
            for group in stream.groups.values():
                for identity, member in list(group.members.items()):
                    if member.last_seen < member_deadline:
                        self._forget_member(identity)
                        touched = True
                if group.release_held(member_deadline):
                    touched = True
                if group.expire_unacked(now):
                    touched = True
            if stream.blocked or self.settings.retention_s is not None:
                self._enforce(stream)
            if stream.blocked and stream.producers and now - stream.wait_sent_at > 0.5:
                stream.wait_sent_at = now
                for producer in list(stream.producers.values()):
                    if producer.identity is not None:
                        self._reply(producer.identity, P.WAIT, {"s": stream.log.address, "r": stream.blocked})
            if touched or stream.started:
                self._dispatch(stream)
        if now >= self._next_persist:
            self._next_persist = now + 0.2
            for stream in self.streams.values():
                if stream.groups_dirty:
                    self._persist(stream)
        if self.settings.fsync and now >= self._next_sync:
            self._next_sync = now + 1.0
            for stream in self.streams.values():
                if stream.log.durable:
                    stream.log.sync()
        if now >= self._next_snapshot:
            self._next_snapshot = now + 1.0
            self._snapshot = self.stats_now()
