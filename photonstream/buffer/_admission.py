"""Admission of producers: PUB (start, join, data, end), their checks and quotas, and their cumulative acks."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer._state import ADDRESS, MULTI_PRODUCER_FILE, Producer, ServiceState, Stream, _joined


class Admission(ServiceState):
    """What producers send, and what they are told back (ACK, NACK, refusals)."""

    def _producer_error(self, identity: bytes, header: dict[str, Any], code: str, message: str) -> None:
        stream = self.streams.get(str(header.get("s", "")))
        if stream is not None:
            stream.errors += 1
        self._refuse(identity, code, message, {"s": header.get("s"), "n": header.get("n")})

    def _on_publish(self, identity: bytes, principal: str, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        address = header.get("s")
        kind = header.get("k")
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise P.ProtocolError("bad-address", f"stream address {address!r} is not experiment/run/stream-id")
        if kind not in P.KINDS:
            raise P.ProtocolError("bad-kind", f"{address}: unknown message kind {kind!r}")
        try:
            n = int(header["n"])
            seq = int(header.get("q", -1))
            producer_id = str(header["p"])
        except (KeyError, TypeError, ValueError):
            raise P.ProtocolError("malformed", f"{address}: PUB header needs integer n and a producer id p") from None
        if not self.access.may(principal, address, "produce"):
            self._producer_error(identity, header, "forbidden", f"{address}: this credential may not write this stream")
            return
        size = sum(len(f) for f in payload)
        limit = self.settings.max_message_bytes
        if size > limit:
            self._producer_error(
                identity, header, "oversized", f"{address}: message of {size} bytes exceeds the limit of {limit} bytes"
            )
            return
        if not payload:
            self._producer_error(identity, header, "malformed", f"{address}: PUB without payload")
            return
        stream = self.streams.get(address)
        if kind == "start":
            self._on_start(identity, header, address, n, seq, producer_id, payload, stream)
            return
        if stream is None or not stream.started:
            self._producer_error(
                identity,
                header,
                "no-start",
                f"{address}: the stream has no start message (the buffer may have restarted "
                "without this non-durable stream)",
            )
            return
        producer = stream.producers.get(producer_id)
        if producer is None:
            reason = stream.refuse_producers or (
                f"{address}: the stream is written by another producer and this one never joined it "
                "(its start message is missing); use a new run number"
            )
            self._producer_error(identity, header, "other-producer", reason)
            return
        producer.identity = identity
        if n <= producer.last_n:  # a resend after a reconnect: already stored
            producer.reack = True
            self._pending_acks[producer] = stream
            return
        if n != producer.last_n + 1:
            self._reply(identity, P.NACK, {"s": address, "n": producer.last_n + 1})
            return
        log = stream.log
        if log.write_error:  # before "ended": a full disk ends the stream, and the producer is told why
            self._producer_error(identity, header, "disk", f"{address}: {log.write_error}")
            return
        if log.end is not None:
            self._producer_error(identity, header, "ended", self._ended_text(stream))
            return
        now_ns = time.time_ns()
        arrival = log.last_transport_seq + 1  # the stream's own count: several producers' sequences overlap
        try:
            if kind in P.DATA_KINDS:
                background = log.durable and self._writer is not None
                record = log.append(kind, arrival, seq, payload, now_ns, write=not background)
                if background:
                    assert self._writer is not None
                    log.unwritten.append(arrival)
                    self._writer.submit(log, record)
            else:
                log.add_control(kind, arrival, seq, payload, now_ns)
        except OSError as exc:
            self._producer_error(
                identity, header, "disk", f"{address}: cannot write to {log.directory}: {exc.strerror}"
            )
            return
        producer.last_n = n
        producer.pending.append((arrival, n))
        self._pending_acks[producer] = stream
        self._enforce(stream)
        self._dispatch(stream)

    def _on_start(
        self,
        identity: bytes,
        header: dict[str, Any],
        address: str,
        n: int,
        seq: int,
        producer_id: str,
        payload: list[zmq.Frame],
        stream: Stream | None,
    ) -> None:
        """The first start message opens the stream; an identical one from another producer joins it."""
        durable = bool(header.get("d", False))
        if stream is not None and not stream.started and stream.log.end is not None:  # ended before it opened
            self._producer_error(identity, header, "ended", self._ended_text(stream))
            return
        if stream is None or not stream.started:
            if durable and self.settings.data_dir is None:
                self._producer_error(
                    identity,
                    header,
                    "no-data-dir",
                    f"{address}: a durable stream needs a buffer started with --data-dir",
                )
                return
            stream = self._open_stream(address, durable, str(header.get("z", "")), producer_id)
            arrival = stream.log.last_transport_seq + 1
            try:
                stream.log.add_control("start", arrival, seq, payload, time.time_ns())
            except OSError as exc:
                self._producer_error(identity, header, "disk", f"{address}: cannot write start message ({exc})")
                return
            stream.start_bytes = _joined(payload)
            producer = Producer(producer_id, identity, n)
            producer.pending.append((arrival, n))
            stream.producers[producer_id] = producer
            self._pending_acks[producer] = stream
            self._greet_waiting_members(stream)
            return
        producer = stream.producers.get(producer_id)
        if producer is not None:  # its own start again (a resend)
            producer.identity = identity
            producer.reack = True
            self._pending_acks[producer] = stream
            return
        log = stream.log
        refusal = stream.refuse_producers
        if not refusal and log.end is not None:
            refusal = self._ended_text(stream)
        elif not refusal and (durable != log.durable or _joined(payload) != stream.start_bytes):
            refusal = (
                f"{address}: the stream is written by another producer with a different start message; "
                "use a new run number"
            )
        if refusal:
            code = "ended" if log.end is not None else "other-producer"
            self._producer_error(identity, header, code, refusal)
            return
        producer = Producer(producer_id, identity, n)
        producer.pending.append((-1, n))  # nothing stored: ack it as soon as the producer's turn comes
        stream.producers[producer_id] = producer
        self._pending_acks[producer] = stream
        if log.durable and log.directory is not None and len(stream.producers) == 2:
            with contextlib.suppress(OSError):
                (log.directory / MULTI_PRODUCER_FILE).write_text(json.dumps({"producers": len(stream.producers)}))

    def _flush_producer_acks(self) -> None:
        """Cumulative acks per producer, covering what is stored (durable: what the disk writer finished)."""
        if not self._pending_acks:
            return
        held: dict[Producer, Stream] = {}
        for producer, stream in self._pending_acks.items():
            if stream.blocked:
                held[producer] = stream
                continue
            unwritten = stream.log.unwritten
            upto = producer.acked_n
            while producer.pending and (not unwritten or producer.pending[0][0] < unwritten[0]):
                upto = producer.pending.popleft()[1]
            if producer.pending:
                held[producer] = stream
            if (upto != producer.acked_n or producer.reack) and upto >= 0 and producer.identity is not None:
                producer.acked_n = upto
                producer.reack = False
                self._reply(producer.identity, P.ACK, {"s": stream.log.address, "n": upto})
        self._pending_acks = held
