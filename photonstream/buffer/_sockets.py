"""The service's sockets and their security: the ROUTER listeners (CURVE, token or none), the ZAP handler that
authenticates their connections, and replies and refusals to peers."""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Any

import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer._state import ServiceError, ServiceState
from photonstream.buffer._writer import DiskWriter
from photonstream.buffer.access import ANONYMOUS, ZAP_ENDPOINT, zap_reply
from photonstream.buffer.credentials import ensure_keypair
from photonstream.buffer.routing import new_router


class Sockets(ServiceState):
    """Binding the listeners and the ZAP handler, closing them, and sending to peers."""

    def _admin_dir(self) -> Path | None:
        keys = self.settings.keys_dir
        return None if keys is None else keys / "admins"

    def _bind(self) -> None:
        s = self.settings
        secret_key = None
        if s.keys_dir is not None and s.secured:
            self.public_key, secret_key = ensure_keypair(s.keys_dir, "buffer")
        if s.secured:  # the ZAP handler first: a secured listener without one would admit any client
            zap = new_router(self.context)
            zap.setsockopt(zmq.LINGER, 0)
            try:
                zap.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                zap.close()
                raise ServiceError(f"buffer: cannot bind the ZAP handler ({exc}); one per ZeroMQ context") from None
            self._zap = zap
        for bind, security in s.listeners:
            sock = new_router(self.context)  # ids nobody can predict: see routing.py
            # listed at once: if setting it up fails, _close_sockets closes it (an open one hangs context.term())
            self._sockets.append(sock)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            if security == "curve":
                assert self.public_key is not None and secret_key is not None
                sock.curve_server = True
                sock.curve_publickey = self.public_key.encode()
                sock.curve_secretkey = secret_key.encode()
            elif security == "token":
                sock.plain_server = True
            if security != "none":
                sock.setsockopt(zmq.ZAP_DOMAIN, f"photonstream-{security}".encode())
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            try:
                sock.bind(bind)
            except zmq.ZMQError as exc:
                raise ServiceError(f"buffer: cannot bind {bind} ({exc})") from None
            self._securities.append(security)
        self._socket = self._sockets[0]
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if s.token_bind is not None:
            self.token_endpoint = self._sockets[-1].getsockopt_string(zmq.LAST_ENDPOINT)
        if self.settings.data_dir is not None:
            written = self.context.socket(zmq.PULL)
            written.bind(f"inproc://photonstream-buffer-written-{id(self)}")
            self._written = written
            self._writer = DiskWriter(self.context, f"inproc://photonstream-buffer-written-{id(self)}")

    def _close_sockets(self) -> None:
        for sock in [*self._sockets, self._zap]:
            if sock is not None:
                sock.close(linger=0)
        self._sockets = []
        self._socket = self._zap = None
        if self._own_context:
            self.context.term()

    def _answer_zap(self) -> None:
        """Authenticate connections (ZAP requests from libzmq's handshakes) against the access table."""
        if self._zap is None:
            return
        while True:
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = zap_reply(request, self.access)
            if reply:
                self._zap.send_multipart(reply)

    def _principal(self, frame: zmq.Frame, index: int) -> str:
        """Who sent a message: the User-Id the ZAP handler gave its connection (anonymous on a 'none' listener)."""
        if self._securities[index] == "none":
            return ANONYMOUS
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return ""

    def _reply(self, identity: bytes, command: bytes, header: dict[str, Any] | None, frames: list[Any] = ()) -> bool:
        sock = self._sockets[identity[0]]
        try:
            sock.send_multipart([identity[1:], P.envelope(command, header), *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.EAGAIN):
                self._member_gone(identity)
                return False
            raise

    def _refuse(self, identity: bytes, code: str, message: str, header: dict[str, Any] | None = None) -> None:
        self.rejected[code] += 1
        with contextlib.suppress(zmq.ZMQError):
            self._reply(identity, P.ERR, {**(header or {}), "c": code, "m": message})
