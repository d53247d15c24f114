"""Wire framing between the buffer service and its producers and consumers (version 1).

Every message is a ZeroMQ multipart message ``[envelope, *payload]`` (a ROUTER socket adds the peer's identity
in front). The envelope is ``b"PSB1"`` (protocol and version), one command byte and a small msgpack map (the
header); ``payload`` is a stream message exactly as its serializer encoded it: the buffer stores and forwards
those frames as opaque bytes and never decodes them. One envelope frame per message keeps the per-message work
(and the number of ZeroMQ frames) small.

Producer → buffer
    PUB   {s: stream address, p: producer id, n: transport seq, q: message seq, k: kind,
           d: durable (start only), z: serializer name (start only)} + payload
          Several producers may write one stream (MPI ranks): each sends the same start message (the first
          opens the stream, an identical one from another producer id joins it, a different one is refused),
          then its data with its own transport sequence (acked per producer). One end message closes the stream
          (rank 0 sends it once every rank's data is acked); data after it is refused.
Buffer → producer
    ACK   {s, n}: every message of stream ``s`` up to transport seq ``n`` is stored
    NACK  {s, n}: out of order; resend from transport seq ``n``
    WAIT  {s, r}: the stream is full (reason ``r``); acks are held, so the producer slows down
    ERR   {s, n, c: code, m: one-line message}: this message was refused
Consumer → buffer
    SUB   {s, g: group, pol: policy, st: start spec, c: credit, m: member id,
           i: incarnation (the subscription's random session), e: stream epoch, a: [offsets acked]}
          ``i``, ``e`` and ``a`` are optional (older clients send none; older buffers ignore them). On a rejoin,
          ``a`` re-sends recent acks (idempotent; at most 4000), counted only when ``e`` is the stream's epoch. The
          same ``m``, ``i`` and credential take over the member's earlier connection and its in-flight messages
          (groups.py: "Members that go away and come back").
    CRED  {c: credit returned, a: [offsets acked], e: stream epoch}
          ``e`` is optional: acks of another epoch (sent before the stream was opened anew) are ignored; without
          it the acks count as they are. Credit is kept within the member's own (SUB ``c``) less what it holds.
    HB    {} heartbeat (any message counts); BYE {} leave the group
    STATS {} → STATS reply with the service's state as JSON (a non-admin sees only its own streams)
    RES   {s, t: result kind, g: group, w: worker, f: [first, last] frame range, n: client seq} + one msgpack
          frame (the result's fields) → RACK {id, n}: a result for the API (``photonstream.client.results``)
Admin (the API's key) → buffer
    ACL     {op: register | sync | drop} + msgpack frame (entries, or addresses for drop) → ACL {ok, i, n}
    RESULTS {after: id, limit} → RESULTS {i: buffer instance, last: newest id} + msgpack frame (list of results)
    FIN     {s: [addresses], r: failed | cancelled, m: one-line message} → FIN {ok, n: how many ended now}
            ends streams whose job or producer died: every group gets what is already stored, then END with that
            reason; later producer data is refused (code ``ended``). A stream that already ended is left as it is;
            one never opened is ended too, so subscribers waiting for its start get the END
Buffer → consumer
    START {s, g, z: serializer, o: group cursor, e: stream epoch} + start payload (always first; ``e`` names this
          opening of the stream: the same across restarts of a durable stream, new when a stream is opened anew)
    CAL   {o} + calibration payload (to every member of every group, in order)
    MSG   {o: offset, q: seq, k: kind, h: log head, x: skipped so far} + payload
    END   {o, x: skipped, r: redelivered, e: expired} + end payload (after the last message the group gets);
          a stream the buffer ended (FIN, or its producer refused for good: disk full) has no end payload and
          says why in the header instead: {rs: failed | cancelled, rm: one-line message}
    HB {}; REJOIN {} (the buffer does not know this member: subscribe again; once per connection); ERR {c, m}

Every message is checked against the sender's authenticated identity (see ``access.py``): a refusal is ``ERR``
with code ``forbidden``.
"""

from __future__ import annotations

from typing import Any

import msgpack

PROTOCOL = b"PSB1"

PUB = b"P"
ACK = b"A"
NACK = b"N"
WAIT = b"W"
ERR = b"E"
SUB = b"S"
CRED = b"C"
HB = b"H"
BYE = b"B"
STATS = b"T"
START = b"s"
CAL = b"c"
MSG = b"m"
END = b"e"
REJOIN = b"R"
RES = b"r"
RACK = b"k"
RESULTS = b"L"
ACL = b"X"
FIN = b"D"

END_REASONS = ("failed", "cancelled")  # why the buffer (FIN) may end a stream

KINDS = ("start", "event", "batch", "calibration", "end")
DATA_KINDS = frozenset({"event", "batch"})

MAX_CREDIT = 1000  # the per-member cap on credit; it also bounds what the ROUTER queues for one peer


class ProtocolError(ValueError):
    """A peer sent something that is not protocol version 1; the message says what (one line)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def envelope(command: bytes, header: dict[str, Any] | None = None) -> bytes:
    """The first frame of a message: protocol tag, command byte, msgpack header."""
    return PROTOCOL + command + (msgpack.packb(header, use_bin_type=True) if header else b"\x80")


def open_envelope(frame: Any) -> tuple[bytes, dict[str, Any]]:
    """(command, header) of an envelope frame (bytes, memoryview or zmq.Frame), or raise ProtocolError."""
    raw = frame.bytes if hasattr(frame, "bytes") else bytes(frame)
    if len(raw) < 5 or raw[:4] != PROTOCOL:
        raise ProtocolError("protocol", "not a photonstream buffer message (protocol PSB1)")
    if len(raw) > 65536:
        raise ProtocolError("malformed", f"header of {len(raw)} bytes is too large (limit 65536)")
    try:
        header = msgpack.unpackb(raw[5:], raw=False, strict_map_key=False)
    except Exception as exc:
        raise ProtocolError("malformed", f"header is not msgpack ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", f"header must be a map, got {type(header).__name__}")
    return raw[4:5], header


def frame_bytes(frame: Any) -> bytes:
    return frame.bytes if hasattr(frame, "bytes") else bytes(frame)


def nbytes_of(frame: Any) -> int:
    """Payload size of one frame without copying it (zmq.Frame, bytes, memoryview or numpy array)."""
    if hasattr(frame, "nbytes"):
        return int(frame.nbytes)
    if hasattr(frame, "buffer"):
        return len(frame.buffer)
    return len(frame)
