"""The simplest consumer: connect to a pipeline's zmq-push (or zmq-pub) socket and iterate over its messages.

The serializer is recognised from the first message, so one reader handles msgpack, hdf5 and cbor-stream2
streams. Iteration ends after the end message; an idle timeout raises instead of hanging forever.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from photonstream.errors import PhotonstreamError, SerializerError
from photonstream.frames import EndMessage, Frame, FrameBatch, Message
from photonstream.serializers.base import Serializer, create, detect
from photonstream.transport.sockets import attach


class StreamTimeout(PhotonstreamError):
    """No message arrived within the reader's idle timeout. (504)"""

    http_status = 504


def read_stream(
    endpoint: str,
    *,
    idle_timeout_s: float = 30.0,
    subscribe: str | None = None,
    bind: bool = False,
    rcvhwm: int = 100,
) -> Iterator[Message]:
    """Yield decoded messages from ``endpoint`` until the end message (included).

    ``subscribe`` switches to a SUB socket for a ``zmq-pub`` handler (topic = stream id, "" for all). ``bind``
    binds ``endpoint`` instead of connecting to it: the handlers connect (``bind: false``, e.g. MPI ranks).
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB if subscribe is not None else zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    if subscribe is not None:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe.encode())
    try:
        attach(sock, endpoint, bind)
        serializer: Serializer | None = None
        while True:
            if not sock.poll(int(idle_timeout_s * 1000)):
                raise StreamTimeout(_waited_for(endpoint, idle_timeout_s, bind, serializer is not None))
            frames = sock.recv_multipart(copy=False)
            payload = [f.buffer for f in frames[1:]] if subscribe is not None else [f.buffer for f in frames]
            if not payload:
                raise SerializerError(f"a message from {endpoint} has a topic but no payload frames")
            if serializer is None:
                serializer = create(detect(payload[0]))
            message = serializer.decode(payload)
            yield message
            if isinstance(message, EndMessage):
                return
    finally:
        sock.close()
        ctx.term()


def _waited_for(endpoint: str, timeout_s: float, bind: bool, started: bool) -> str:
    if started:
        return f"{endpoint}: the stream stopped; no message within {timeout_s:g} s and no end message"
    if bind:
        return (
            f"bound {endpoint}: no pipeline connected and sent within {timeout_s:g} s "
            "(its zmq-push/zmq-pub handler needs bind: false and this address)"
        )
    return (
        f"no message from {endpoint} within {timeout_s:g} s: no pipeline is sending there "
        "(a handler with bind: false, as under mpirun, needs a consumer that binds: --bind)"
    )


@dataclass
class StreamSummary:
    """What a reader saw: counts, bytes, rates, latency; ``hit_rate`` from the frames' ``hit`` flags."""

    messages: int = 0
    events: int = 0
    hits: int = 0
    flagged: int = 0
    nbytes: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    first_at: float = 0.0
    last_at: float = 0.0
    end: EndMessage | None = None

    def add(self, message: Message) -> None:
        now = time.perf_counter()
        if self.messages == 0:
            self.first_at = now
        self.last_at = now
        self.messages += 1
        frames = message.frames if isinstance(message, FrameBatch) else [message] if isinstance(message, Frame) else []
        for frame in frames:
            self.events += 1
            self.nbytes += sum(a.nbytes for a in frame.arrays.values())
            hit = frame.metadata.get("hit")
            if hit is not None:
                self.flagged += 1
                self.hits += bool(hit)
        if frames and message.created_ns:
            self.latencies_ms.append((time.time_ns() - message.created_ns) / 1e6)
        if isinstance(message, EndMessage):
            self.end = message

    @property
    def seconds(self) -> float:
        return max(self.last_at - self.first_at, 1e-9)

    @property
    def hit_rate(self) -> float | None:
        return self.hits / self.flagged if self.flagged else None

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "messages": self.messages,
            "events": self.events,
            "hits": self.hits,
            "hit_rate": self.hit_rate,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events / self.seconds, 1),
            "mb_per_s": round(self.nbytes / self.seconds / 1e6, 1),
            "latency_p50_ms": round(lat[len(lat) // 2], 3) if lat else None,
            "end_reason": self.end.reason if self.end else None,
            "events_sent": self.end.events_sent if self.end else None,
        }
