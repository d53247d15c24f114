"""Wire framing between the buffer service and its producers and consumers (version 1).

Every message is a ZeroMQ multipart message ``[PROTOCOL, command, header, *payload]`` (a ROUTER socket adds the
peer's identity in front). ``header`` is a small msgpack map; ``payload`` is a stream message exactly as its
serializer encoded it: the buffer stores and forwards those frames as opaque bytes and never decodes them.

Producer → buffer
    PUB   {s: stream address, p: producer id, n: transport seq, q: message seq, k: kind,
           d: durable (start only), z: serializer name (start only)} + payload
Buffer → producer
    ACK   {s, n}: every message of stream ``s`` up to transport seq ``n`` is stored
    NACK  {s, n}: out of order; resend from transport seq ``n``
    WAIT  {s, r}: the stream is full (reason ``r``); acks are held, so the producer slows down
    ERR   {s, n, c: code, m: one-line message}: this message was refused
Consumer → buffer
    SUB   {s, g: group, pol: policy, st: start spec, c: credit, m: member id}
    CRED  {c: credit returned, a: [offsets acked]}
    HB    {} heartbeat (any message counts); BYE {} leave the group
    STATS {} → STATS reply with the service's state as JSON
Buffer → consumer
    START {s, g, z: serializer, o: group cursor} + start payload (always first)
    CAL   {o} + calibration payload (to every member of every group, in order)
    MSG   {o: offset, q: seq, k: kind, h: log head, x: skipped so far} + payload
    END   {o, x: skipped, r: redelivered, e: expired} + end payload (after the last message the group gets)
    HB {}; REJOIN {} (the buffer does not know this member: subscribe again); ERR {c, m}
"""

from __future__ import annotations

from typing import Any

import msgpack

PROTOCOL = b"PSB1"

PUB = b"PUB"
ACK = b"ACK"
NACK = b"NACK"
WAIT = b"WAIT"
ERR = b"ERR"
SUB = b"SUB"
CRED = b"CRED"
HB = b"HB"
BYE = b"BYE"
STATS = b"STATS"
START = b"START"
CAL = b"CAL"
MSG = b"MSG"
END = b"END"
REJOIN = b"REJOIN"

KINDS = ("start", "event", "batch", "calibration", "end")
DATA_KINDS = frozenset({"event", "batch"})

MAX_CREDIT = 1000  # the per-member cap on credit; it also bounds what the ROUTER queues for one peer


class ProtocolError(ValueError):
    """A peer sent something that is not protocol version 1; the message says what (one line)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def pack(header: dict[str, Any]) -> bytes:
    return msgpack.packb(header, use_bin_type=True)


def unpack(frame: Any) -> dict[str, Any]:
    """Decode a header frame (bytes, memoryview or zmq.Frame) into a dict, or raise ProtocolError."""
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    if len(raw) > 65536:
        raise ProtocolError("malformed", f"header of {len(raw)} bytes is too large (limit 65536)")
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("malformed", f"header is not msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", f"header must be a map, got {type(header).__name__}")
    return header


def frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def nbytes_of(frame: Any) -> int:
    """Payload size of one frame without copying it (zmq.Frame, bytes, memoryview or numpy array)."""
    if hasattr(frame, "nbytes"):
        return int(frame.nbytes)
    if hasattr(frame, "buffer"):
        return len(frame.buffer)
    return len(frame)
