"""What the buffer service's parts share: its limits, the per-stream state, and the attributes of the service.

``BufferService`` (service.py) is composed of mixins, one concern each (sockets, loop, storage, recovery,
admission, membership, dispatch, ending, admin, stats); ``ServiceState`` names the attributes they share, which
``BufferService.__init__`` sets.
"""

from __future__ import annotations

import re
import threading
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer.groups import Group
from photonstream.buffer.log import StreamLog
from photonstream.errors import PhotonstreamError

if TYPE_CHECKING:
    import queue

    from photonstream.buffer._writer import DiskWriter
    from photonstream.buffer.access import AccessTable
    from photonstream.buffer.credentials import Security
    from photonstream.buffer.settings import BufferSettings

ADDRESS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}/[0-9]{1,12}/[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SPILL_DIR = "_spill"
MULTI_PRODUCER_FILE = "producers.json"  # a durable stream written by several producers (see _recover)
ENDED_FILE = "ended.json"  # a durable stream the buffer ended (FIN, disk full): reason and message
MAX_END_MESSAGE = 500
READ_WARN_EVERY_S = 10.0  # an unreadable segment is retried every tick; say so at most this often
MAX_RESULT_BYTES = 1 << 20
MAX_MEMBER_ID = 128
MAX_ASKED_TO_REJOIN = 10_000  # unknown connections remembered as told to subscribe again
MAX_REJOIN_OFFSETS = 4 * P.MAX_CREDIT  # acks a rejoining subscription may re-send (it keeps about 2x its credit)


@dataclass(eq=False)
class Producer:
    """One producer of a stream (an MPI rank's ``buffer`` handler): its own transport sequence and acks."""

    producer_id: str
    identity: bytes | None  # the connection acks go to (the latest it wrote from)
    last_n: int  # newest transport seq stored
    acked_n: int = -1  # newest transport seq acked
    pending: deque[tuple[int, int]] = field(default_factory=deque)  # (arrival, n) stored, not yet acked
    reack: bool = False  # a resend arrived: repeat the last ack


@dataclass(eq=False)
class Stream:
    log: StreamLog
    groups: dict[str, Group] = field(default_factory=dict)
    producers: dict[str, Producer] = field(default_factory=dict)
    start_bytes: bytes | None = None  # the start message as stored: a joining producer must send the same
    refuse_producers: str = ""  # why no producer may write (a recovered stream that had several)
    blocked: str = ""  # why producer acks are held ("" when not)
    wait_sent_at: float = 0.0
    read_warned_at: float = -1e9  # when an unreadable segment was last reported
    errors: int = 0
    groups_dirty: bool = False
    ended_by: tuple[str, str] | None = None  # (reason, message) when the buffer ended it, not its producer

    @property
    def started(self) -> bool:
        return self.log.start is not None

    @property
    def epoch(self) -> int | None:
        """Which opening of the stream its offsets belong to: the start message's arrival time (ns)."""
        return None if self.log.start is None else self.log.start.ts_ns

    def retain_from(self) -> int | None:
        needs = [g.retain_from for g in self.groups.values() if g.retain_from is not None]
        return min(needs) if needs else None


def _offsets(header: dict[str, Any], key: str) -> list[int]:
    """A list of message offsets from a SUB header (absent: none)."""
    value = header.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_REJOIN_OFFSETS:
        raise P.ProtocolError("malformed", f"SUB field {key!r} must be a list of at most {MAX_REJOIN_OFFSETS} offsets")
    if not all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in value):
        raise P.ProtocolError("malformed", f"SUB field {key!r} must hold offsets (integers >= 0)")
    return value


def _joined(frames: list[Any]) -> bytes:
    return b"".join(P.frame_bytes(f) for f in frames)


class ServiceError(PhotonstreamError):
    """The buffer service cannot start (bind failed, unreadable data directory)."""

    http_status = 503


class ServiceState:
    """The attributes the service's mixins share (annotations only: ``BufferService.__init__`` sets them)."""

    settings: BufferSettings
    context: zmq.Context
    streams: dict[str, Stream]
    _members: dict[bytes, tuple[Stream, Group]]
    _principals: dict[bytes, str]
    _pending_acks: dict[Producer, Stream]
    access: AccessTable
    _access_seen: object
    rejected: Counter[str]
    instance: str
    public_key: str | None
    _sockets: list[zmq.Socket]
    _securities: list[Security]
    _zap: zmq.Socket | None
    _results: deque[dict[str, Any]]
    _result_id: int
    _results_lock: threading.Lock
    token_endpoint: str | None
    _dispatch_later: set[str]
    _calls: queue.SimpleQueue[Callable[[], None]]
    _loop_thread: int | None
    _asked_to_rejoin: OrderedDict[bytes, float]
    _stop: threading.Event
    _socket: zmq.Socket | None
    _writer: DiskWriter | None
    _written: zmq.Socket | None
    _own_context: bool
    endpoint: str
    started_at: float
    _snapshot: dict[str, Any]
    _rates: dict[str, tuple[float, int, int]]
    _next_tick: float
    _next_persist: float
    _next_sync: float
    _next_snapshot: float
