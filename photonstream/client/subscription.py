"""Reading a stream from the buffer service: ``subscribe(endpoint, stream, group=..., policy=..., start=...)``.

The iterator yields the stream's messages decoded by its serializer (``photonstream.frames`` classes): the start
message first (also to a consumer that joins late), calibration updates and data messages as the group's policy
lets them through, and the end message last; then it stops. With ``decode=False`` it yields ``Delivery`` objects
(offset, kind and the raw frames) instead. When the stream's job or producer dies (or it is cancelled) the buffer
ends it: the group still gets every message already stored, then an ``EndMessage`` with ``reason`` failed or
cancelled and ``error`` saying why (raw: a ``Delivery`` of kind end with ``reason`` and ``message``); a stream
that never opened yields that end alone.

A data message is acked (and its credit returned) when the application asks for the next one, so a consumer that
dies while holding messages has them redelivered to the other members of its group. Delivery is at-least-once;
the subscription drops duplicates by offset (the buffer's per-stream sequence number), so the application sees
each message once. Heartbeats go out whenever the iterator waits; an application that spends longer than the
buffer's member timeout on one message is taken for gone (its messages are redelivered) and rejoins on its next
call.

Rejoining (the connection was cut, or the buffer forgot this member): the new SUB carries this subscription's
session (a random ``incarnation``, so a member id reused by another process is never mistaken for this one) and the
offsets it acked recently (about twice its credit: every ack that can still be in doubt, since the buffer never has
more than ``credit`` unacked messages out to one member; acks are idempotent, so re-sending is harmless). A rejoin
only happens inside ``__next__``, after the message the application had is acked, so the application holds nothing
then. Within the buffer's member timeout the buffer settles those acks and sends this member the rest of its old
in-flight messages again: a message the application has does not reach another member's application. The acks only
count for the same opening of the stream (the epoch the START message carries; plain acks carry it too). Received
messages not yet handed out are dropped on a rejoin (the buffer sends them again). A START of another epoch (a memory
stream opened anew after a buffer restart) resets what the subscription has seen and acked: its offsets start over.

Security: pass ``credentials`` (``photonstream.buffer.credentials.Credentials``: the stream's CURVE key pair or
token, as the API's create response gives them; ``Credentials.from_endpoint``) to connect to a buffer listener that
authenticates. A buffer that refuses them (no credential, another stream's) raises ``ConsumerError`` at once.
``publish_result(kind, data, ...)`` sends a typed result for the API over the same connection (see
``photonstream.client.results``).
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials, HandshakeWatch
from photonstream.buffer.groups import Policy, parse_start
from photonstream.errors import ConfigError, PhotonstreamError
from photonstream.frames import EndMessage, Message, StartMessage
from photonstream.metrics import LatencyHistogram
from photonstream.serializers.base import Serializer
from photonstream.serializers.base import create as create_serializer

SEEN_LIMIT = 200_000  # offsets remembered for dropping duplicates
RECENT_ACKS_MARGIN = 16  # acks kept for a rejoin beyond twice the credit
SEND_TIMEOUT_S = 10.0  # a send blocks only while no connection is up; past this it raises


class ConsumerError(PhotonstreamError):
    """The buffer cannot be reached or refused the subscription. (503)"""

    http_status = 503


class AccessRefusedError(ConsumerError):
    """The buffer authenticated this client but its credential is not for this stream. (403)"""

    http_status = 403


@dataclass(slots=True)
class Delivery:
    """One message as the buffer sent it: ``frames`` are the serializer's bytes, undecoded."""

    kind: str  # start | calibration | event | batch | end
    offset: int
    seq: int
    frames: list[Any]
    head: int = 0  # the log's head when it was sent (lag = head - offset - 1)
    reason: str = ""  # end only, when the buffer ended the stream (its job or producer died): failed | cancelled
    message: str = ""  # ... and why, in one line ("" for an end message its producer sent)

    @property
    def nbytes(self) -> int:
        return sum(P.nbytes_of(f) for f in self.frames)


@dataclass
class SubscriptionStats:
    received: int = 0  # data messages received (duplicates included)
    yielded: int = 0  # data messages handed to the application
    bytes: int = 0  # payload bytes handed to the application
    duplicates: int = 0  # redelivered copies dropped
    skipped: int = 0  # messages the group's policy skipped (as reported by the buffer)
    expired: int = 0  # messages evicted before the group got them
    redelivered: int = 0  # messages the group had to redeliver
    rejoins: int = 0
    lag: int = 0  # messages in the log after the last one received
    started: float = field(default_factory=time.perf_counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)  # creation → handed out (decoded data)


_FINISHED = object()


class Subscription(Iterator[Any]):
    def __init__(
        self,
        endpoint: str,
        stream: str,
        group: str = "default",
        policy: str = "lossless",
        start: str | int = "beginning",
        credit: int = 16,
        *,
        decode: bool = True,
        heartbeat_s: float = 1.0,
        timeout_s: float | None = None,
        connect_timeout_s: float | None = None,
        start_timeout_s: float | None = None,
        on_idle: Callable[[Subscription], None] | None = None,
        member: str | None = None,
        context: zmq.Context | None = None,
        credentials: Credentials | None = None,
    ) -> None:
        Policy.parse(policy)
        parse_start(start)
        if not 1 <= credit <= P.MAX_CREDIT:
            raise ConfigError(f"credit: must be between 1 and {P.MAX_CREDIT} (got {credit})")
        self.endpoint = endpoint
        self.stream = stream
        self.group = group
        self.policy = policy
        self.start_spec = start
        self.credit = credit
        self.decode = decode
        self.heartbeat_s = heartbeat_s
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.start_timeout_s = start_timeout_s
        self.on_idle = on_idle  # called while nothing arrives (about 4 times a second): a CLI's "waiting" line
        self.member = member or uuid.uuid4().hex[:12]
        self.stats = SubscriptionStats()
        self.start: StartMessage | None = None
        self.end: EndMessage | None = None
        self.serializer_name = ""
        self._serializer: Serializer | None = None
        self._queue: deque[tuple[bytes, dict[str, Any], list[Any]]] = deque()
        self._seen: set[int] = set()
        self._calibrations_seen: set[int] = set()
        self._pending_acks: list[int] = []
        self._recent_acks: deque[int] = deque(maxlen=2 * credit + RECENT_ACKS_MARGIN)  # re-sent with a rejoin
        self._incarnation = uuid.uuid4().hex  # this subscription's session at the buffer (see the docstring)
        self._epoch: int | None = None  # which opening of the stream the offsets belong to (from START)
        self._pending_credit = 0
        self._last_offset: int | None = None  # yielded, not yet acked
        self._greeted = False
        self._done = False
        self._sent_at = 0.0
        self._heard_at = self._opened_at = time.monotonic()
        self._answered = False  # any reply yet: a buffer listens at the endpoint
        self.credentials = credentials
        self.results_acked = 0
        self._result_n = 0
        self._socket = (context or zmq.Context.instance()).socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 1000)
        self._socket.setsockopt(zmq.SNDHWM, 0)
        self._socket.setsockopt(zmq.SNDTIMEO, int(SEND_TIMEOUT_S * 1000))
        if credentials is not None:
            credentials.apply(self._socket)
        self._watch = HandshakeWatch(self._socket, endpoint)  # a refused handshake raises instead of waiting
        self._socket.connect(endpoint)
        self._subscribe()

    # -- wire ---------------------------------------------------------------------------------------------
    def _send(self, command: bytes, header: dict[str, Any], block: bool = True) -> None:
        """Send to the buffer; with ``block=False`` (heartbeats, goodbyes) a message that cannot go now is dropped."""
        try:
            self._socket.send(P.envelope(command, header), 0 if block else zmq.NOBLOCK)
        except zmq.Again:
            if not block:
                return
            reason = self._watch.check() or f"buffer {self.endpoint}: no connection for {SEND_TIMEOUT_S:g} s"
            raise ConsumerError(reason) from None
        self._sent_at = time.monotonic()

    def _subscribe(self) -> None:
        header = {
            "s": self.stream,
            "g": self.group,
            "pol": self.policy,
            "st": self.start_spec,
            "c": self.credit,
            "m": self.member,
            "i": self._incarnation,
        }
        if self._epoch is not None:
            header.update(e=self._epoch, a=list(self._recent_acks))
        self._send(P.SUB, header)

    def _flush(self, block: bool = True) -> None:
        if self._pending_credit or self._pending_acks:
            self._recent_acks.extend(self._pending_acks)  # before sending: one dropped here is re-sent on a rejoin
            self._send(P.CRED, self._credit_header(self._pending_credit, self._pending_acks), block)
            self._pending_credit = 0
            self._pending_acks = []

    def _credit_header(self, credit: int, acks: list[int]) -> dict[str, Any]:
        """CRED's header; with the epoch the acked offsets belong to, so a buffer that opened the stream anew since
        ignores them (they name other messages there)."""
        header: dict[str, Any] = {"c": credit, "a": acks}
        if self._epoch is not None:
            header["e"] = self._epoch
        return header

    def commit(self) -> None:
        """Ack everything yielded so far, now (auto-ack otherwise happens on the next call)."""
        self._ack_last()
        self._flush()

    def _ack_last(self) -> None:
        if self._last_offset is not None:
            self._pending_acks.append(self._last_offset)
            self._pending_credit += 1
            self._last_offset = None

    # -- iteration ----------------------------------------------------------------------------------------
    def __iter__(self) -> Subscription:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        self._ack_last()
        if self._pending_credit >= max(1, self.credit // 4):
            self._flush()
        while True:
            while self._queue:
                try:
                    item = self._next_from_queue()
                except PhotonstreamError:
                    raise
                except (LookupError, TypeError, ValueError, ArithmeticError) as exc:  # a header field is not a number
                    raise ConsumerError(
                        f"buffer {self.endpoint}: malformed reply ({type(exc).__name__}: {exc})"
                    ) from None
                if item is _FINISHED:
                    self.close()
                    return self.end if self.decode else self._end_delivery
                if item is not None:
                    return item
            self._flush()
            self._receive()

    def _next_from_queue(self) -> Any:
        command, header, frames = self._queue.popleft()
        if command == P.MSG:
            offset = int(header["o"])
            self.stats.lag = max(0, int(header.get("h", 0)) - offset - 1)
            self.stats.skipped = int(header.get("x", self.stats.skipped))
            if offset in self._seen:
                self.stats.duplicates += 1
                self._pending_acks.append(offset)
                self._pending_credit += 1
                return None
            self._remember(offset)
            self._last_offset = offset
            self.stats.yielded += 1
            delivery = Delivery(
                str(header.get("k", "event")), offset, int(header.get("q", -1)), frames, int(header.get("h", 0))
            )
            self.stats.bytes += delivery.nbytes
            if not self.decode:
                return delivery
            message = self._decoded(delivery)
            self.stats.latency.observe_since(getattr(message, "created_ns", 0))
            return message
        if command == P.START:
            delivery = Delivery("start", -1, -1, frames)
            return self._decoded(delivery) if self.decode else delivery
        if command == P.CAL:
            seq = int(header.get("q", -1))
            if seq in self._calibrations_seen:
                return None
            self._calibrations_seen.add(seq)
            delivery = Delivery("calibration", int(header.get("o", -1)), seq, frames)
            return self._decoded(delivery) if self.decode else delivery
        # END
        self.stats.skipped = int(header.get("x", self.stats.skipped))
        self.stats.redelivered = int(header.get("r", 0))
        self.stats.expired = int(header.get("e", 0))
        self.stats.lag = 0
        reason, why = str(header.get("rs", "")), str(header.get("rm", ""))
        self._end_delivery = Delivery("end", int(header.get("o", -1)), -1, frames, reason=reason, message=why)
        if reason:  # the buffer ended it (no end payload): the job or producer died, or was cancelled
            stream_id = self.start.stream_id if self.start is not None else self.stream.rsplit("/", 1)[-1]
            self.end = EndMessage(stream_id, reason=reason, error=why)  # type: ignore[arg-type]
        elif self.decode:
            message = self._decode(frames)
            if isinstance(message, EndMessage):
                self.end = message
        return _FINISHED

    def _remember(self, offset: int) -> None:
        self._seen.add(offset)
        if len(self._seen) > SEEN_LIMIT:
            for old in sorted(self._seen)[: SEEN_LIMIT // 2]:
                self._seen.discard(old)

    def _decode(self, frames: list[Any]) -> Message:
        if self._serializer is None:
            self._serializer = create_serializer(self.serializer_name or "msgpack")
        return self._serializer.decode([f.buffer if hasattr(f, "buffer") else f for f in frames])

    def _decoded(self, delivery: Delivery) -> Message:
        message = self._decode(delivery.frames)
        if isinstance(message, StartMessage):
            self.start = message
        return message

    def _receive(self) -> None:
        """Wait for the buffer (heartbeating), and queue what it sends."""
        sock = self._socket
        if not sock.poll(int(min(self.heartbeat_s, 0.25) * 1000)):
            if self._watch.check():
                raise ConsumerError(self._watch.refused)
            now = time.monotonic()
            self._check_waits(now)
            if self.on_idle is not None:
                self.on_idle(self)
            if self.timeout_s is not None and now - self._heard_at > self.timeout_s:
                raise ConsumerError(
                    f"buffer {self.endpoint}: no answer for {self.timeout_s:g} s while reading {self.stream}"
                )
            if now - self._sent_at >= self.heartbeat_s:
                self._send(P.HB, {}, block=False)
            return
        while True:
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            self._heard_at = time.monotonic()
            self._answered = True
            try:
                command, header = P.open_envelope(parts[0])
            except P.ProtocolError:
                continue
            self._on_reply(command, header, parts[1:])
        if time.monotonic() - self._sent_at > self.heartbeat_s:
            self._send(P.HB, {}, block=False)
        if not self._greeted and not self._queue:
            self._check_waits(time.monotonic())

    @property
    def waiting_for_start(self) -> bool:
        """The buffer answers, and the stream has not started there (no producer opened it yet)."""
        return self._answered and not self._greeted and not self._done

    def _check_waits(self, now: float) -> None:
        """``connect_timeout_s``: no reply at all (nothing listens at the endpoint, or a firewall drops it);
        ``start_timeout_s``: the buffer answers but the stream has not started."""
        waited = now - self._opened_at
        if not self._answered and self.connect_timeout_s is not None and waited > self.connect_timeout_s:
            raise ConsumerError(
                f"buffer {self.endpoint}: no answer in {self.connect_timeout_s:g} s (nothing listening there? "
                "check the address and that the buffer runs)"
            )
        if self.waiting_for_start and self.start_timeout_s is not None and waited > self.start_timeout_s:
            raise ConsumerError(
                f"buffer {self.endpoint}: stream {self.stream} has not started after {self.start_timeout_s:g} s "
                "(no producer opened it: check the stream id, or that its job runs)"
            )

    def _on_reply(self, command: bytes, header: dict[str, Any], frames: list[Any]) -> None:
        if command == P.MSG:
            self.stats.received += 1
            self._queue.append((command, header, frames))
        elif command == P.START:
            self.serializer_name = str(header.get("z", "")) or self.serializer_name
            self._on_epoch(header.get("e"))
            if not self._greeted:
                self._greeted = True
                self._queue.append((command, header, frames))
        elif command in (P.CAL, P.END):
            self._queue.append((command, header, frames))
        elif command == P.RACK:
            self.results_acked += 1
        elif command == P.REJOIN:
            self._rejoin()
        elif command == P.ERR:
            message = f"buffer {self.endpoint}: {header.get('m', 'refused')}"
            if header.get("c") == "bad-request":
                raise ConfigError(message)
            if header.get("c") == "forbidden":
                raise AccessRefusedError(message)
            raise ConsumerError(message)

    def _on_epoch(self, epoch: Any) -> None:
        """A START from another opening of the stream (a memory stream opened anew after a buffer restart): its
        offsets name other messages, so what was seen, acked or held under the old ones means nothing now."""
        if not isinstance(epoch, int) or isinstance(epoch, bool):
            return
        if self._epoch is not None and epoch != self._epoch:
            self._seen.clear()
            self._recent_acks.clear()
            self._pending_acks = []
            self._pending_credit = 0  # owed for messages of the old opening: the new member has its full credit
            self._last_offset = None
        self._epoch = epoch

    def _rejoin(self) -> None:
        """The buffer forgot this member (restart, cut, or we were silent too long): subscribe again, re-sending the
        recent acks and the held offset (see the module docstring).

        Data messages received but not yet handed out are dropped: the buffer sends them again.
        """
        self.stats.rejoins += 1
        self._queue = deque(item for item in self._queue if item[0] != P.MSG)
        self._pending_credit = 0
        pending, self._pending_acks = self._pending_acks, []
        self._recent_acks.extend(pending)
        self._subscribe()
        if pending:  # also as a plain ack, for a buffer that predates acks in SUB (harmless twice)
            self._send(P.CRED, self._credit_header(0, pending))

    # -- results ------------------------------------------------------------------------------------------
    def publish_result(
        self,
        kind: str,
        data: dict[str, Any],
        *,
        frames: tuple[int, int] | None = None,
        worker: str | None = None,
    ) -> None:
        """Send a typed result of this stream to the API (checked here; the buffer acks it with RACK)."""
        from photonstream.client.results import encode_result

        if self._socket.closed:
            raise ConsumerError("publish_result: the subscription is closed")
        self._result_n += 1
        header, payload = encode_result(self.stream, kind, data, group=self.group,
                                        worker=worker or self.member, frames=frames, n=self._result_n)  # fmt: skip
        self._socket.send_multipart([P.envelope(P.RES, header), payload])
        self._sent_at = time.monotonic()

    # -- end ----------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Ack what was handed out, leave the group, close the socket (idempotent)."""
        if self._socket.closed:
            return
        self._done = True
        try:
            self._ack_last()
            self._flush(block=False)
            self._send(P.BYE, {}, block=False)
        finally:
            self._watch.close()
            self._socket.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        sock = getattr(self, "_socket", None)
        if sock is not None and not sock.closed:
            sock.close(linger=0)


def subscribe(
    endpoint: str,
    stream: str,
    group: str = "default",
    policy: str = "lossless",
    start: str | int = "beginning",
    credit: int = 16,
    **options: Any,
) -> Subscription:
    """Join ``group`` of ``stream`` (``experiment/run/stream-id``) at the buffer ``endpoint``; iterate the result.

    ``policy``: lossless | latest | decimate:N | sample:RATE (fixed when the group is created). ``start`` (for a
    new group): beginning | newest | offset:N | time:EPOCH_S | time:ISO-8601. ``credit``: how many messages the
    buffer may send ahead of the application. Options: ``decode`` (False: yield raw ``Delivery`` objects),
    ``timeout_s`` (raise ``ConsumerError`` after this long with no word from the buffer), ``connect_timeout_s``
    (no reply at all since subscribing), ``start_timeout_s`` (the stream has not started), ``heartbeat_s``.
    """
    return Subscription(endpoint, stream, group, policy, start, credit, **options)


def subscribe_stream(
    info: Any, group: str | None = None, *, run: int | None = None, security: str | None = None, **options: Any
) -> Subscription:
    """Subscribe to a stream the API created, from its create response (or its ``data_endpoint``): the buffer
    address and credentials of the link ``security`` (default: the endpoint's), the address of ``run`` (default:
    the first), and ``group`` (default: the first consumer group of the request, with its policy)."""
    if hasattr(info, "model_dump"):
        info = info.model_dump(mode="json")
    endpoint = info.get("data_endpoint", info) if isinstance(info, dict) else info
    address, credentials = Credentials.from_endpoint(endpoint, security)  # type: ignore[arg-type]
    streams = list(endpoint.get("streams") or [])
    if run is not None:
        streams = [s for s in streams if s.split("/")[1] == str(run)]
    if not streams:
        raise ConfigError(f"run: {run} is not one of the stream's runs" if run is not None else "no stream address")
    groups = {g["name"]: g.get("policy", "lossless") for g in endpoint.get("consumer_groups") or []}
    name = group or next(iter(groups), "default")
    options.setdefault("policy", groups.get(name, "lossless"))
    return Subscription(address, streams[0], name, credentials=credentials, **options)
