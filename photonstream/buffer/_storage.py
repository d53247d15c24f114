"""The streams' logs on the service's side: opening them, disk-writer completions, retention, the memory and disk
budgets (spill or block the producer), and the groups' committed offsets of durable streams."""

from __future__ import annotations

import contextlib
import json
import time

import zmq
from msgpack import unpackb as msgpack_unpack

from photonstream.buffer._state import SPILL_DIR, ServiceState, Stream
from photonstream.buffer.log import GROUPS_FILE, StreamLog, stream_dir


class Storage(ServiceState):
    """Where each stream's data is kept and how much of it."""

    def _open_stream(self, address: str, durable: bool, serializer: str, producer: str) -> Stream:
        stream = self.streams.get(address)
        if stream is None:
            stream = Stream(StreamLog(address))
            self.streams[address] = stream
        log = stream.log
        log.durable = durable
        log.serializer = serializer
        log.producer = producer
        log.segment_bytes = self.settings.segment_bytes
        root = self.settings.data_dir
        if root is not None:
            log.directory = stream_dir(root, address) if durable else stream_dir(root / SPILL_DIR, address)
        log.open_files()
        stream.groups_dirty = True
        return stream

    def _drain_written(self) -> None:
        """Completions from the disk writer: durable messages that may now be acked to their producer."""
        if self._written is None:
            return
        while True:
            try:
                address, n, error = msgpack_unpack(self._written.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            stream = self.streams.get(address)
            if stream is None:
                continue
            log = stream.log
            if log.unwritten and log.unwritten[0] == n:
                log.unwritten.popleft()
            if error and not log.write_error:
                log.write_error = error
                stream.errors += 1
                self._end_stream(address, "failed", error)  # its producer is refused for good: end it
            if stream.blocked or error:
                self._enforce(stream)

    def _memory_total(self) -> int:
        return sum(s.log.mem_bytes for s in self.streams.values())

    def _disk_total(self) -> int:
        return sum(s.log.disk_bytes for s in self.streams.values())

    def _disk_over(self, log: StreamLog) -> bool:
        s = self.settings
        return (s.disk_per_stream is not None and log.disk_bytes > s.disk_per_stream) or (
            s.disk_total is not None and self._disk_total() > s.disk_total
        )

    def _enforce(self, stream: Stream) -> None:
        """Apply retention and the memory and disk budgets; block the producer if a lossless group prevents it."""
        s = self.settings
        log = stream.log
        retain = stream.retain_from()
        limit = log.head if retain is None else retain
        reasons: list[str] = []
        # retention: age and size, never past what a lossless group still needs
        if s.retention_s is not None:
            oldest_ns = time.time_ns() - int(s.retention_s * 1e9)
            while log.first < limit and (r := log.get(log.first)) is not None and r.ts_ns < oldest_ns:
                log.evict_before(log.first + 1)
        if s.retention_bytes is not None:
            while log.first < limit and log.held_bytes > s.retention_bytes:
                log.evict_before(self._eviction_step(log, limit))
        # disk budget: delete whole old segments nobody needs
        while self._disk_over(log):
            seg = log.oldest_segment()
            if seg is None or seg.last_offset >= limit or seg is log._active():
                reasons.append(f"disk budget full ({log.disk_bytes} bytes on disk)")
                break
            log.evict_before(seg.last_offset + 1)
        # memory budget: durable → drop the cached copy; else spill to disk, or drop what nobody needs
        while log.mem_bytes > s.memory_per_stream or self._memory_total() > s.memory_total:
            record = log.oldest_in_memory()
            if record is None:
                break
            if log.durable:
                if log.release_memory(spill=False):  # on disk already: drop the cached copy
                    continue
                break  # the writer has not got there yet; acks wait for it, which slows the producer
            if record.offset < limit:  # no lossless group needs it: forget it rather than spill it
                log.evict_before(record.offset + 1)
                continue
            if s.spill and log.directory is not None and not self._disk_over(log):
                try:
                    log.release_memory(spill=True)
                    continue
                except OSError as exc:
                    reasons.append(f"cannot spill to {log.directory}: {exc.strerror}")
            if not reasons:
                reasons.append(f"memory budget full ({log.mem_bytes} bytes in memory) and no room on disk")
            break
        if log.write_error:
            reasons.append(log.write_error)
        if reasons:
            laggards = sorted(g.name for g in stream.groups.values() if g.retain_from is not None)
            stream.blocked = f"{log.address}: {'; '.join(reasons)}; lossless group(s) {', '.join(laggards)} lag behind"
        else:
            stream.blocked = ""

    @staticmethod
    def _eviction_step(log: StreamLog, limit: int) -> int:
        """Where evicting the oldest data lands: the end of its segment on disk, or one record in memory."""
        record = log.get(log.first)
        if record is not None and record.segment is not None:
            return min(record.segment.last_offset + 1, limit)
        return min(log.first + 1, limit)

    def _persist(self, stream: Stream) -> None:
        """Write the groups' committed offsets of a durable stream (atomic rename; survives kill -9)."""
        stream.groups_dirty = False
        log = stream.log
        if not log.durable or log.directory is None or not log.directory.exists():
            return
        state = {"groups": [g.state() for g in stream.groups.values()]}
        tmp = log.directory / (GROUPS_FILE + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(state))
            tmp.replace(log.directory / GROUPS_FILE)
