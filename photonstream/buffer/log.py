"""The per-stream log: data messages at consecutive offsets, in memory and in append-only segment files.

Memory always holds the newest records (a suffix of the log); disk holds older ones (spilled) or, for a
``durable`` stream, every record (memory is then only a cache). Payloads are the serializer's frames kept as
opaque buffers (``zmq.Frame`` objects as received, so nothing is copied). Start, calibration and end messages
are control records kept with the stream (and, when durable, in ``control.rec``) rather than at offsets, so that
offsets count data messages only and policies can skip by arithmetic.

On-disk record: ``b"PSR1" | u32 header length | u64 payload length | msgpack header | payload``; the header holds
``o`` offset, ``n`` transport seq, ``q`` message seq, ``k`` kind, ``t`` arrival time (ns), ``f`` frame lengths.
A record cut short by a crash is dropped (and the file truncated) when the stream is recovered: its producer
never got an ack for it, so it resends it.
"""

from __future__ import annotations

import json
import shutil
import threading
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photonstream.buffer._records import RECORD_MAGIC, Record, RecordFile, Segment
from photonstream.buffer.protocol import nbytes_of

__all__ = [
    "CONTROL_FILE",
    "GROUPS_FILE",
    "META_FILE",
    "RECORD_MAGIC",
    "SEGMENT_SUFFIX",
    "Record",
    "RecordFile",
    "Segment",
    "StreamLog",
    "stream_dir",
]

SEGMENT_SUFFIX = ".seg"
CONTROL_FILE = "control.rec"
META_FILE = "stream.json"
GROUPS_FILE = "groups.json"


def stream_dir(root: Path, address: str) -> Path:
    experiment, run, stream_id = address.split("/")
    return root / experiment / run / stream_id


@dataclass
class StreamLog:
    """Records of one stream (``experiment/run/stream-id``) and its control messages."""

    address: str
    directory: Path | None = None  # where segments go (durable data or spill); None: memory only
    durable: bool = False
    segment_bytes: int = 256 << 20
    serializer: str = ""
    producer: str = ""
    records: list[Record | None] = field(default_factory=list)
    base: int = 0  # offset of records[0]
    first: int = 0  # oldest offset still held
    head: int = 0  # next offset to be written
    mem_first: int = 0  # oldest offset whose payload is in memory
    mem_bytes: int = 0
    disk_bytes: int = 0
    last_transport_seq: int = -1
    start: Record | None = None
    calibrations: list[tuple[int, Record]] = field(default_factory=list)  # (applies from offset, record)
    end: Record | None = None
    segments: deque[RecordFile] = field(default_factory=deque)
    control: RecordFile | None = None
    bytes_in: int = 0
    messages_in: int = 0
    unwritten: deque[int] = field(default_factory=deque)  # transport seqs queued for the disk writer, in order
    write_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)  # segment list and disk sizes (writer thread)
    _times: list[int] = field(default_factory=list)  # arrival ns per record, for start-at-time

    # -- writing ------------------------------------------------------------------------------------------
    def open_files(self) -> None:
        """Create the stream's directory and control file (durable) or its spill directory."""
        if self.directory is None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.durable and self.control is None:
            meta = {"address": self.address, "serializer": self.serializer, "producer": self.producer}
            tmp = self.directory / (META_FILE + ".tmp")
            tmp.write_text(json.dumps(meta))
            tmp.replace(self.directory / META_FILE)
            self.control = RecordFile(self.directory / CONTROL_FILE)

    def add_control(self, kind: str, transport_seq: int, seq: int, frames: list[Any], ts_ns: int) -> Record:
        lengths = tuple(nbytes_of(f) for f in frames)
        record = Record(self.head, kind, transport_seq, seq, ts_ns, sum(lengths), frames, lengths=lengths)
        if self.control is not None:
            self.control.append(record, frames)
        self._keep_control(record)
        self.last_transport_seq = transport_seq
        self.messages_in += 1
        self.bytes_in += record.nbytes
        return record

    def _keep_control(self, record: Record) -> None:
        if record.kind == "start":
            self.start = record
        elif record.kind == "end":
            self.end = record
        else:
            self.calibrations.append((record.offset, record))

    def append(
        self, kind: str, transport_seq: int, seq: int, frames: list[Any], ts_ns: int, write: bool = True
    ) -> Record:
        """Add a data message at the head. A durable stream writes it through to the active segment, now or (with
        ``write=False``) when the caller's writer thread calls ``write_through``."""
        lengths = tuple(nbytes_of(f) for f in frames)
        record = Record(self.head, kind, transport_seq, seq, ts_ns, sum(lengths), frames, lengths=lengths)
        if self.durable and self.directory is not None and write:
            self._write_segment(record, frames)
        self.records.append(record)
        self._times.append(ts_ns)
        self.head += 1
        self.mem_bytes += record.nbytes
        self.last_transport_seq = transport_seq
        self.messages_in += 1
        self.bytes_in += record.nbytes
        return record

    def _write_segment(self, record: Record, frames: list[Any]) -> None:
        assert self.directory is not None
        with self.lock:
            seg = self.segments[-1] if self.segments else None
            if seg is None or seg.size >= self.segment_bytes:
                seg = RecordFile(self.directory / f"{record.offset:020d}{SEGMENT_SUFFIX}", record.offset)
                self.segments.append(seg)
            seg.writing = True
        before = seg.size
        try:
            seg.append(record, frames)  # outside the lock: the loop may read and evict meanwhile
        finally:
            with self.lock:
                seg.writing = False
                self.disk_bytes += seg.size - before

    def write_through(self, record: Record) -> None:
        """Write a record appended with ``write=False`` (called by the disk-writer thread)."""
        frames = record.frames
        if frames is not None and record.segment is None:
            self._write_segment(record, frames)

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, offset: int) -> Record | None:
        if offset < self.first or offset >= self.head:
            return None
        return self.records[offset - self.base]

    def payload(self, record: Record) -> list[Any]:
        if record.frames is not None:
            return record.frames
        if record.segment is None:
            raise KeyError(f"offset {record.offset} of {self.address} is no longer held")
        return record.segment.read(record)

    def offset_at_time(self, t_ns: int) -> int:
        """The first offset that arrived at or after ``t_ns`` (the head if none did)."""
        i = bisect_left(self._times, t_ns, lo=self.first - self.base)
        return self.base + i

    # -- freeing ------------------------------------------------------------------------------------------
    def oldest_in_memory(self) -> Record | None:
        return self.get(self.mem_first) if self.mem_first < self.head else None

    def release_memory(self, spill: bool) -> bool:
        """Free the payload of the oldest in-memory record: it is on disk (durable) or spilled there now.

        Returns False if the payload has nowhere to go (no directory, or ``spill`` is False); raises OSError
        if writing it fails (disk full).
        """
        record = self.oldest_in_memory()
        if record is None:
            return False
        if record.segment is None:
            if self.durable or not spill or self.directory is None:  # durable: not written yet
                return False
            assert record.frames is not None
            self.directory.mkdir(parents=True, exist_ok=True)
            self._write_segment(record, record.frames)
        record.frames = None
        self.mem_first += 1
        self.mem_bytes -= record.nbytes
        return True

    def evict_before(self, offset: int) -> int:
        """Forget every record below ``offset``; delete segments that hold nothing newer. Returns how many."""
        offset = min(offset, self.head)
        if offset <= self.first:
            return 0
        count = offset - self.first
        for o in range(self.first, offset):
            record = self.records[o - self.base]
            if record is not None and record.frames is not None:
                self.mem_bytes -= record.nbytes
                record.frames = None
            self.records[o - self.base] = None
        self.first = offset
        self.mem_first = max(self.mem_first, offset)
        with self.lock:
            while self.segments and self.segments[0].last_offset < offset and self.segments[0] is not self._active():
                seg = self.segments.popleft()
                self.disk_bytes -= seg.size
                seg.delete_later()  # unlinking a big file is slow: not on the I/O loop
        if self.first - self.base > 4096 and self.first - self.base > len(self.records) // 2:
            cut = self.first - self.base
            del self.records[:cut]
            del self._times[:cut]
            self.base = self.first
        return count

    def _active(self) -> RecordFile | None:
        """The segment still being written (never deleted under the writer)."""
        if not self.segments:
            return None
        last = self.segments[-1]
        if (
            last.writing
            or (self.durable and self.end is None)
            or (not self.durable and last.last_offset >= self.head - 1)
        ):
            return last
        return None

    def oldest_segment(self) -> RecordFile | None:
        return self.segments[0] if self.segments else None

    @property
    def held_bytes(self) -> int:
        """Bytes of the records still held, counting each once (memory and disk overlap for durable streams)."""
        if self.durable:
            return self.disk_bytes
        return self.mem_bytes + self.disk_bytes

    def sync(self) -> None:
        for f in (self.control, self.segments[-1] if self.segments else None):
            if f is not None:
                f.sync()

    def close(self) -> None:
        for seg in self.segments:
            seg.close()
        if self.control is not None:
            self.control.close()

    def delete_files(self) -> None:
        self.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- recovery -----------------------------------------------------------------------------------------
    @classmethod
    def recover(cls, directory: Path, segment_bytes: int) -> StreamLog:
        """Rebuild a durable stream from its directory: control records, segments (payloads stay on disk)."""
        meta = json.loads((directory / META_FILE).read_text())
        log = cls(
            address=str(meta["address"]),
            directory=directory,
            durable=True,
            segment_bytes=segment_bytes,
            serializer=str(meta.get("serializer", "")),
            producer=str(meta.get("producer", "")),
        )
        log.control = RecordFile(directory / CONTROL_FILE)
        for record in list(log.control.scan()):
            record.frames = log.control.read(record)
            log._keep_control(record)
            log.last_transport_seq = max(log.last_transport_seq, record.transport_seq)
        seg_paths = sorted(directory.glob(f"*{SEGMENT_SUFFIX}"))
        first: int | None = None
        for path in seg_paths:
            seg = RecordFile(path, int(path.stem))
            records = list(seg.scan())
            if not records:
                seg.delete()
                continue
            seg.last_offset = records[-1].offset
            log.segments.append(seg)
            log.disk_bytes += seg.size
            if first is None:
                first = records[0].offset
                log.base = log.first = first
            for record in records:
                log.records.append(record)
                log._times.append(record.ts_ns)
                log.last_transport_seq = max(log.last_transport_seq, record.transport_seq)
        log.head = log.base + len(log.records)
        log.mem_first = log.head
        if first is None:
            start_offset = log.end.offset if log.end is not None else 0
            log.base = log.first = log.head = log.mem_first = start_offset
        return log
