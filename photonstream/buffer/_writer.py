"""The disk writer: a thread that appends durable records, so the service's I/O loop never waits for the disk."""

from __future__ import annotations

import queue
import threading

import zmq
from msgpack import packb as msgpack_pack

from photonstream.buffer.log import Record, StreamLog


class DiskWriter:
    """Writes durable records in a thread of its own, so the I/O loop never waits for the disk.

    The loop queues records in order; the writer appends them to their stream's active segment and reports each
    completion (address, transport seq, error) on an inproc socket the loop polls. Producer acks of a durable
    stream only cover what the writer has finished, so the producer is slowed to the disk's pace.
    """

    def __init__(self, context: zmq.Context, endpoint: str) -> None:
        self._queue: queue.SimpleQueue[tuple[StreamLog, Record] | None] = queue.SimpleQueue()
        self._endpoint = endpoint
        self._context = context
        self._thread = threading.Thread(target=self._run, name="photonstream-buffer-disk", daemon=True)
        self._ready = threading.Event()
        self._thread.start()
        self._ready.wait()

    def submit(self, log: StreamLog, record: Record) -> None:
        self._queue.put((log, record))

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _run(self) -> None:
        sock = self._context.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self._endpoint)
        self._ready.set()
        try:
            while (item := self._queue.get()) is not None:
                log, record = item
                error = ""
                try:
                    if not log.write_error:
                        log.write_through(record)
                except OSError as exc:
                    error = f"cannot write to {log.directory}: {exc.strerror}"
                except Exception as exc:  # never die silently: the producer would wait for acks forever
                    error = f"disk writer failed: {type(exc).__name__}: {exc}"
                sock.send(msgpack_pack([log.address, record.transport_seq, error]))
        finally:
            sock.close()
