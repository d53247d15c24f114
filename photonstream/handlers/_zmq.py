"""What zmq-push and zmq-pub share: socket setup, timed zero-copy sends, and a close that loses nothing."""

from __future__ import annotations

from typing import Any

import zmq
from pydantic import Field, field_validator

from photonstream.config.base import PluginOptions
from photonstream.errors import HandlerError
from photonstream.frames import Message
from photonstream.serializers.base import Buffer
from photonstream.transport.sockets import DeliveryTracker, attach, check_endpoint

ZERO_COPY_MIN_BYTES = 64 * 1024  # below this a copy is cheaper than tracking the buffer


class ZmqOptions(PluginOptions):
    address: str = Field(description="ZeroMQ endpoint, e.g. tcp://127.0.0.1:5555 or tcp://*:31001")
    bind: bool = Field(True, description="bind the address (consumers connect); false: connect to it")
    hwm: int = Field(100, ge=1, description="messages queued per peer before sends block")
    send_timeout_s: float = Field(30.0, gt=0, description="give up (and fail the run) when no peer takes a message")
    linger_s: float = Field(60.0, ge=0, description="how long close waits for queued messages to be delivered")

    @field_validator("address")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)


class ZmqHandlerBase:
    needs_bytes = True
    socket_type: int = zmq.PUSH

    def __init__(self, options: ZmqOptions) -> None:
        self.options = options
        self.endpoint = ""
        self._ctx: zmq.Context[Any] | None = None
        self._sock: zmq.Socket[Any] | None = None
        self._tracker = DeliveryTracker()

    def _configure(self, sock: zmq.Socket[Any]) -> None:
        """Socket options specific to the subclass, set before bind/connect."""

    def open(self) -> None:
        self._ctx = zmq.Context()
        sock = self._ctx.socket(self.socket_type)
        sock.setsockopt(zmq.SNDHWM, self.options.hwm)
        sock.setsockopt(zmq.SNDTIMEO, int(self.options.send_timeout_s * 1000))
        sock.setsockopt(zmq.LINGER, int(self.options.linger_s * 1000))
        if not self.options.bind:
            # Queue only on completed connections: with no consumer bound there, sends time out after
            # send_timeout_s with a message saying so, instead of queueing until close waits out linger_s.
            sock.setsockopt(zmq.IMMEDIATE, 1)
        self._configure(sock)
        self._sock = sock
        self.endpoint = attach(sock, self.options.address, self.options.bind)

    def _prefix(self, message: Message) -> list[Buffer]:
        return []

    def handle(self, message: Message, frames: list[Buffer] | None) -> None:
        assert self._sock is not None and frames is not None
        parts = self._prefix(message) + frames
        big = any((f.nbytes if hasattr(f, "nbytes") else len(f)) >= ZERO_COPY_MIN_BYTES for f in parts)
        try:
            tracker = self._sock.send_multipart(parts, copy=not big, track=big)
        except zmq.Again:
            raise HandlerError(self._nobody_took(message)) from None
        self._tracker.add(tracker if big else None)

    def _nobody_took(self, message: Message) -> str:
        waited = f"within {self.options.send_timeout_s:g} s (send_timeout_s)"
        if self.options.bind:
            return f"{self.options.type} {self.endpoint}: no consumer took message {message.seq} {waited}"
        return (
            f"{self.options.type} {self.endpoint} (bind: false): no consumer bound there took message "
            f"{message.seq} {waited}; start one first, e.g. `photonstream receive --bind {self.endpoint}`"
        )

    def close(self) -> None:
        if self._sock is None:
            return
        pending = self._tracker.wait(self.options.linger_s)
        self._sock.close(linger=int(self.options.linger_s * 1000))
        assert self._ctx is not None
        self._ctx.term()  # returns once queued messages are flushed or LINGER has expired
        self._sock = None
        if pending:
            raise HandlerError(
                f"{self.options.type} {self.endpoint}: {pending} message(s) still undelivered after "
                f"linger_s={self.options.linger_s:g}"
            )
