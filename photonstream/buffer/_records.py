"""Record files: the on-disk form of a stream's records (data segments and the control file) and ``Record``.

On-disk record: ``b"PSR1" | u32 header length | u64 payload length | msgpack header | payload`` (see log.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

RECORD_MAGIC = b"PSR1"
_PREFIX = struct.Struct("<4sIQ")


@dataclass(slots=True, eq=False)
class Record:
    """One message of a stream. ``frames`` is None once the payload lives only on disk."""

    offset: int
    kind: str
    transport_seq: int
    seq: int
    ts_ns: int
    nbytes: int
    frames: list[Any] | None = None
    segment: Segment | None = None
    position: int = 0  # where the payload starts in the segment file
    lengths: tuple[int, ...] = ()

    def header(self) -> bytes:
        return msgpack.packb(
            {
                "o": self.offset,
                "n": self.transport_seq,
                "q": self.seq,
                "k": self.kind,
                "t": self.ts_ns,
                "f": list(self.lengths),
            },
            use_bin_type=True,
        )


def _buffers(frames: list[Any]) -> list[Any]:
    return [f.buffer if hasattr(f, "buffer") else f for f in frames]


def _writev_all(fd: int, buffers: list[Any]) -> None:
    """os.writev until everything is written (a regular file may take a large write in pieces)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        written = os.writev(fd, views)
        while views and written >= views[0].nbytes:
            written -= views[0].nbytes
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


class RecordFile:
    """An append-only file of records (a data segment or the control file)."""

    def __init__(self, path: Path, first_offset: int = 0) -> None:
        self.path = path
        self.first_offset = first_offset
        self.last_offset = first_offset - 1
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.writing = False

    def append(self, record: Record, frames: list[Any]) -> None:
        header = record.header()
        prefix = _PREFIX.pack(RECORD_MAGIC, len(header), record.nbytes)
        start = self.size
        try:
            _writev_all(self.fd, [prefix, header, *_buffers(frames)])
        except OSError:
            os.ftruncate(self.fd, start)  # leave no partial record behind
            raise
        record.position = start + len(prefix) + len(header)
        record.segment = self  # last: another thread takes a set segment to mean "readable on disk"
        self.size = start + len(prefix) + len(header) + record.nbytes
        self.last_offset = max(self.last_offset, record.offset)

    def read(self, record: Record) -> list[Any]:
        data = os.pread(self.fd, record.nbytes, record.position)
        if len(data) != record.nbytes:
            raise OSError(f"{self.path}: record at offset {record.offset} is truncated")
        view = memoryview(data)
        frames, at = [], 0
        for n in record.lengths:
            frames.append(view[at : at + n])
            at += n
        return frames

    def scan(self) -> Iterator[Record]:
        """Every complete record in the file; a torn tail is cut off."""
        pos, good = 0, 0
        with open(self.path, "rb") as fh:
            while True:
                fh.seek(pos)
                prefix = fh.read(_PREFIX.size)
                if len(prefix) < _PREFIX.size:
                    break
                magic, header_len, payload_len = _PREFIX.unpack(prefix)
                if magic != RECORD_MAGIC or pos + _PREFIX.size + header_len + payload_len > self.size:
                    break
                try:
                    h = msgpack.unpackb(fh.read(header_len), raw=False)
                except Exception:
                    break
                payload_at = pos + _PREFIX.size + header_len
                yield Record(
                    offset=int(h["o"]),
                    kind=str(h["k"]),
                    transport_seq=int(h["n"]),
                    seq=int(h["q"]),
                    ts_ns=int(h["t"]),
                    nbytes=payload_len,
                    segment=self,
                    position=payload_at,  # type: ignore[arg-type]
                    lengths=tuple(int(n) for n in h["f"]),
                )
                pos = good = payload_at + payload_len
        if good < self.size:
            os.ftruncate(self.fd, good)
            self.size = good

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def delete(self) -> None:
        self.close()
        self.path.unlink(missing_ok=True)

    def delete_later(self) -> None:
        """Close now; unlink in the reaper's thread (see ``Reaper``)."""
        self.close()
        REAPER.submit(self.path)


class Reaper:
    """Unlinks deleted segment files in a thread of its own.

    Freeing a large file's blocks takes the file system tens of milliseconds, and the buffer's I/O loop must not
    wait for it: done on the loop, retention deleting old segments showed as p99 delivery latency going from ~3 ms
    to 30-50 ms (spikes of 132 ms). A file not yet unlinked when the process dies is found by recovery, whose
    retention then deletes it again; its bytes already left the stream's disk accounting when it was handed over.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()

    def submit(self, path: Path) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="photonstream-buffer-reaper", daemon=True)
                self._thread.start()
            self._idle.clear()
            self._queue.put(path)

    def wait(self, timeout_s: float = 10.0) -> bool:
        """True once every file handed over so far is gone (for shutdown and tests)."""
        return self._idle.wait(timeout_s)

    def _run(self) -> None:
        while True:
            path = self._queue.get()
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            with self._lock:
                if self._queue.empty():
                    self._idle.set()


REAPER = Reaper()


Segment = RecordFile
