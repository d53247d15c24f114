"""Ending streams whose producer is gone (FIN, ``end_streams``, a failed disk): every group gets what is stored,
then END with the reason."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any

from photonstream.buffer import protocol as P
from photonstream.buffer._state import ADDRESS, ENDED_FILE, MAX_END_MESSAGE, ServiceState, Stream
from photonstream.buffer.log import Record, StreamLog
from photonstream.errors import ConfigError

log = logging.getLogger("photonstream.buffer")


class Ending(ServiceState):
    """The buffer's own end of a stream, and how it is told."""

    def end_streams(self, addresses: list[str], reason: str, message: str, timeout_s: float = 5.0) -> int:
        """End these streams with ``reason`` (failed | cancelled) and a one-line message (FIN in protocol.py), from
        any thread; returns how many ended now (one that had already ended is left as it was)."""
        reason, message = self._checked_end(addresses, reason, message)
        return self._in_loop(lambda: sum(self._end_stream(a, reason, message) for a in addresses), timeout_s)

    @staticmethod
    def _checked_end(addresses: list[Any], reason: Any, message: Any) -> tuple[str, str]:
        for address in addresses:
            if not isinstance(address, str) or not ADDRESS.match(address):
                raise ConfigError(f"fin: stream address {address!r} is not experiment/run/stream-id")
        if reason not in P.END_REASONS:
            raise ConfigError(f"fin: reason {reason!r} is not one of {', '.join(P.END_REASONS)}")
        return str(reason), " ".join(str(message).split())[:MAX_END_MESSAGE]

    def _end_stream(self, address: str, reason: str, message: str) -> bool:
        """End a stream whose producer is gone: every group gets what is stored, then END with the reason; later
        producer data is refused. A stream never opened is ended too (its waiting subscribers get the END)."""
        stream = self.streams.get(address)
        if stream is None:
            stream = Stream(StreamLog(address))
            self.streams[address] = stream
        if stream.log.end is not None:
            return False  # the producer ended it, or we did before
        self._mark_ended(stream, reason, message)
        directory = stream.log.directory
        if stream.log.durable and directory is not None:  # a restarted buffer must not reopen it
            with contextlib.suppress(OSError):
                (directory / ENDED_FILE).write_text(json.dumps({"reason": reason, "message": message}))
        log.info("buffer: %s ended %s: %s", address, reason, message)
        if stream.started:
            self._dispatch(stream)
        else:
            for group in stream.groups.values():
                self._send_end(stream, group)
        return True

    @staticmethod
    def _mark_ended(stream: Stream, reason: str, message: str) -> None:
        log = stream.log
        stream.ended_by = (reason, message)
        log.end = Record(log.head, "end", log.last_transport_seq, -1, time.time_ns(), 0, [])

    @staticmethod
    def _ended_text(stream: Stream) -> str:
        text = f"{stream.log.address}: the stream has already ended"
        if stream.ended_by is not None:
            text += f" ({stream.ended_by[0]}: {stream.ended_by[1]})"
        return text
