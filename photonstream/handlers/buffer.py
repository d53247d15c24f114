"""``buffer``: send the stream to a photonstream buffer service (``photonstream buffer serve``).

The stream is addressed ``experiment/run/stream-id`` from the start message. Every message goes out as the
serializer encoded it (zero-copy) with a transport sequence number; the buffer acks cumulatively, and at most
``window`` messages are in flight, so a buffer that holds its acks (a lossless consumer is behind and the memory
and disk budgets are full) slows the pipeline down. If the buffer goes silent (it may have restarted), unacked
messages are sent again; the buffer drops the copies it already has. Nothing is dropped silently: past
``send_timeout_s`` without progress, or on a refusal from the buffer, the handler raises ``HandlerError``.

Security (``security``): ``curve`` (authenticated, encrypted) or ``token`` (authenticated, plaintext: inside one
facility) take the producer's credentials from the environment variable named by ``credentials_env``, or that
entry of the job's secrets file (JSON, see ``photonstream.buffer.credentials``; the API puts the stream's producer
credential in its job's secrets file, ``photonstream.job_secrets``), never from the pipeline file. A buffer that
refuses the credentials fails the run at once, with the reason.

Several producers (MPI ranks) may write one stream: each rank's handler has its own producer id and transport
sequence and sends the same start message; the buffer joins them (``joins_ranks``). Acks are reported to
``photonstream.reporting`` (what is stored, and the end message once stored) for the job's progress reports.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any, ClassVar, Literal

import zmq
from pydantic import Field

from photonstream import reporting
from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import CREDENTIALS_ENV, Credentials, HandshakeWatch
from photonstream.config.base import PluginOptions
from photonstream.errors import ConfigError, HandlerError
from photonstream.frames import EndMessage, Message, StartMessage
from photonstream.handlers.base import registry
from photonstream.serializers.base import Buffer


class BufferOptions(PluginOptions):
    type: Literal["buffer"] = "buffer"
    address: str = Field("tcp://127.0.0.1:5600", description="endpoint of the buffer service (tcp://HOST:PORT)")
    durable: bool = Field(False, description="the buffer writes the stream to disk and keeps it across restarts")
    send_timeout_s: float = Field(30.0, gt=0, description="fail if the buffer accepts nothing for this long")
    window: int = Field(16, ge=1, le=1000, description="messages sent but not yet acked by the buffer")
    window_mb: float = Field(256.0, gt=0, description="megabytes sent but not yet acked by the buffer")
    resend_s: float = Field(2.0, gt=0, description="resend unacked messages after this long without any answer")
    security: Literal["none", "curve", "token"] = Field(
        "none", description="curve (authenticated, encrypted), token (authenticated, plaintext) or none"
    )
    credentials_env: str = Field(
        CREDENTIALS_ENV,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$",
        description="environment variable holding the producer's credentials (JSON) for curve or token",
    )


@registry.register
class BufferHandler:
    Options: ClassVar[type[PluginOptions]] = BufferOptions
    needs_bytes: ClassVar[bool] = True
    joins_ranks: ClassVar[bool] = True  # every MPI rank sends the start message; the buffer joins them

    def __init__(
        self, options: BufferOptions, context: zmq.Context | None = None, credentials: Credentials | None = None
    ) -> None:
        self.options = options
        self._context = context
        self._credentials = credentials
        self._socket: zmq.Socket | None = None
        self._watch: HandshakeWatch | None = None
        self.stream = ""
        self.producer = uuid.uuid4().hex
        self._next_n = 0
        self._unacked: deque[tuple[int, int, list[Any], str]] = deque()  # (transport seq, bytes, parts, kind)
        self._end: EndMessage | None = None
        self._unacked_bytes = 0
        self._heard_at = 0.0  # last answer of any kind from the buffer
        self._progress_at = 0.0  # last ack that freed window space
        self._wait_reason = ""
        self._failed: str = ""
        self._resent: tuple[int, bool] = (-1, False)
        self._resent_at = 0.0
        self.messages = 0
        self.bytes = 0

    # -- handler protocol ---------------------------------------------------------------------------------
    def _link_credentials(self) -> Credentials | None:
        security = self.options.security
        if security == "none":
            return None
        credentials = self._credentials
        if credentials is None:
            try:
                credentials = Credentials.from_env(self.options.credentials_env)
            except ConfigError as exc:
                raise HandlerError(f"buffer: {exc}") from None
        if credentials is None:
            raise HandlerError(
                f"buffer: security {security} needs the producer's credentials in ${self.options.credentials_env} "
                "(or in the job's secrets file)"
            )
        if credentials.security != security:
            raise HandlerError(f"buffer: security is {security} but the credentials are for {credentials.security}")
        return credentials

    def open(self) -> None:
        credentials = self._link_credentials()
        context = self._context or zmq.Context.instance()
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)
        if credentials is not None:
            credentials.apply(sock)
        self._watch = HandshakeWatch(sock, self.options.address)  # a refused handshake fails the run at once
        try:
            sock.connect(self.options.address)
        except zmq.ZMQError as exc:
            sock.close()
            raise HandlerError(f"buffer: cannot connect to {self.options.address} ({exc})") from None
        self._socket = sock
        self._heard_at = self._progress_at = time.monotonic()
        reporting.flow.producer_opened()

    def handle(self, message: Message, frames: list[Buffer] | None) -> None:
        if self._failed:
            raise HandlerError(self._failed)
        if frames is None:
            raise HandlerError("buffer: the handler needs encoded frames")
        header: dict[str, Any] = {"p": self.producer, "n": self._next_n, "q": message.seq, "k": message.kind}
        if isinstance(message, StartMessage):
            self.stream = f"{message.experiment}/{message.run}/{message.stream_id}"
            header["d"] = self.options.durable
            header["z"] = message.serializer
        elif not self.stream:
            raise HandlerError("buffer: the first message of a stream must be its start message")
        header["s"] = self.stream
        if isinstance(message, EndMessage):
            self._end = message
        size = sum(P.nbytes_of(f) for f in frames)
        parts = [P.envelope(P.PUB, header), *frames]
        self._unacked.append((self._next_n, size, parts, message.kind))
        self._unacked_bytes += size
        self._next_n += 1
        if len(self._unacked) == 1:
            self._progress_at = time.monotonic()
        self._send(parts)
        self.messages += 1
        self.bytes += size
        self._receive(0)
        window_bytes = self.options.window_mb * (1 << 20)
        while len(self._unacked) >= self.options.window or (
            self._unacked_bytes > window_bytes and len(self._unacked) > 1
        ):
            self._wait()

    def close(self) -> None:
        try:
            if not self._failed and self._socket is not None:
                while self._unacked:
                    self._wait()
        finally:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            if self._socket is not None:
                self._socket.close(linger=0)
                self._socket = None
                reporting.flow.producer_closed()

    # -- internals ----------------------------------------------------------------------------------------
    def _send(self, parts: list[Any]) -> None:
        assert self._socket is not None
        self._socket.send_multipart(parts, copy=False)

    def _fail(self, reason: str) -> None:
        self._failed = reason
        raise HandlerError(reason)

    def _wait(self) -> None:
        """Block until the buffer answers; resend when it is silent; fail past the send timeout."""
        self._receive(100)
        if self._watch is not None and self._watch.check():
            self._fail(f"buffer: {self._watch.refused}")
        now = time.monotonic()
        if self._unacked and now - self._progress_at > self.options.send_timeout_s:
            why = self._wait_reason or "no answer"
            self._fail(
                f"buffer {self.options.address}: stream {self.stream} accepted nothing for "
                f"{self.options.send_timeout_s:g} s ({why})"
            )
        if self._unacked and now - self._heard_at > self.options.resend_s:
            self._heard_at = now
            for _, _, parts, _ in self._unacked:
                self._send(parts)

    def _receive(self, timeout_ms: int) -> None:
        assert self._socket is not None
        if not self._socket.poll(timeout_ms):
            return
        while True:
            try:
                parts = self._socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._heard_at = time.monotonic()
            try:
                command, header = P.open_envelope(parts[0])
                n = int(header["n"]) if command in (P.ACK, P.NACK) else 0
            except P.ProtocolError:
                continue
            except (LookupError, TypeError, ValueError, ArithmeticError):
                self._fail(f"buffer {self.options.address}: malformed reply {parts[0][:64]!r} (no integer n)")
            if command == P.ACK:
                self._acked(n)
            elif command == P.NACK:
                self._resend_from(n)
            elif command == P.WAIT:
                self._wait_reason = str(header.get("r", "buffer full"))
            elif command == P.ERR:
                self._fail(f"buffer {self.options.address}: {header.get('m', 'refused the message')}")

    def _acked(self, n: int) -> None:
        messages = data = nbytes = 0
        ended = False
        while self._unacked and self._unacked[0][0] <= n:
            _, size, _, kind = self._unacked.popleft()
            self._unacked_bytes -= size
            messages += 1
            nbytes += size
            data += kind in P.DATA_KINDS
            ended = ended or kind == "end"
        if messages:
            self._progress_at = time.monotonic()
            self._wait_reason = ""
            reporting.flow.acked(self.stream, messages, nbytes, data)
            if ended and self._end is not None:
                reporting.flow.ended(self.stream, self._end)

    def _resend_from(self, n: int) -> None:
        self._acked(n - 1)
        now = time.monotonic()
        if self._resent == (n, True) and now - self._resent_at < self.options.resend_s:
            return  # every message after a gap is answered with the same NACK: resend once
        self._resent, self._resent_at = (n, True), now
        for m, _, parts, _ in self._unacked:
            if m >= n:
                self._send(parts)
