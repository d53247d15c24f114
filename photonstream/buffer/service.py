"""The buffer service: one ZeroMQ ROUTER socket, one I/O loop, many streams, groups and members.

Producers (the ``buffer`` handler) and consumers (``photonstream.client.subscribe``) talk to the same socket; see
``protocol.py`` for the framing. The loop receives without copying (``copy=False``), keeps the received
``zmq.Frame`` objects in the log and sends the same frames to every group (libzmq shares them by reference), so
the per-message work is a small header and some bookkeeping, whatever the size of the payload.

Flow control: consumers get at most their credit; producers get cumulative acks and stop when their window is
full, so a stream that is out of memory and disk budget (with a lossless group still needing its oldest data)
slows its producer by holding acks back (a WAIT message says why) instead of dropping anything.

Member liveness: consumers send a heartbeat (or any message) at least every second while they wait; a member
silent for ``member_timeout_s`` is removed and its unacked messages go to the other members. A send to a peer
whose connection is gone (ROUTER_MANDATORY: EHOSTUNREACH) detaches it at once: it gets nothing more, but its
unacked messages stay its own until the member timeout, so that the same subscription, rejoining over a new
connection, can settle them with the acks it re-sends and take the rest back (see ``groups.py``). A rejoin's acks
only count when its stream epoch (the start message's arrival time, sent with START, the same
across restarts of a durable stream) is the stream's: offsets of a memory stream opened anew name other messages.
Plain acks (CRED) that carry an epoch are held to the same rule; one without (an older client) counts as before.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

import zmq

from photonstream.buffer._admin import Admin
from photonstream.buffer._admission import Admission
from photonstream.buffer._dispatch import Dispatch
from photonstream.buffer._ending import Ending
from photonstream.buffer._loop import Loop
from photonstream.buffer._membership import Membership
from photonstream.buffer._recovery import Recovery
from photonstream.buffer._sockets import Sockets
from photonstream.buffer._state import SPILL_DIR, Producer, ServiceError, Stream
from photonstream.buffer._stats import Stats
from photonstream.buffer._storage import Storage
from photonstream.buffer._writer import DiskWriter
from photonstream.buffer.access import ACCESS_FILE, AccessTable
from photonstream.buffer.credentials import Security
from photonstream.buffer.groups import Group
from photonstream.buffer.settings import BufferSettings

__all__ = ["BufferService", "BufferSettings", "DiskWriter", "Producer", "ServiceError", "Stream", "tune_allocator"]


def tune_allocator() -> bool:
    """Let glibc keep and reuse freed payload buffers instead of unmapping them (dedicated service processes).

    Payloads are large (MBs) and the log frees them in arrival order; by default glibc returns each one to the
    kernel, so every new message costs page faults and zeroing of fresh pages. Returns False where glibc's
    ``mallopt`` is not available.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
        return bool(ok)
    except (OSError, AttributeError):
        return False


class BufferService(Sockets, Loop, Recovery, Storage, Admission, Membership, Dispatch, Ending, Admin, Stats):
    """Run with ``start()`` (a background thread, for embedding) or ``serve_forever()``; stop with ``stop()``.

    Each concern is a mixin of its own module (see ``_state.py``); this class holds the state and the lifecycle.
    """

    def __init__(self, settings: BufferSettings | None = None, context: zmq.Context | None = None) -> None:
        self.settings = settings or BufferSettings()
        self._own_context = context is None
        self.context = context or zmq.Context(io_threads=self.settings.io_threads)
        self.streams: dict[str, Stream] = {}
        self._members: dict[bytes, tuple[Stream, Group]] = {}
        self._principals: dict[bytes, str] = {}  # who each member authenticated as (checked again on grant changes)
        self._pending_acks: dict[Producer, Stream] = {}  # producers with something to ack
        kept = self.settings.data_dir / ACCESS_FILE if self.settings.data_dir and self.settings.secured else None
        self.access = AccessTable(set(self.settings.admin_keys), self._admin_dir(), state_file=kept)
        self._access_seen = self.access.snapshot
        self.rejected: Counter[str] = Counter()  # refused messages by error code (stats: service.rejected)
        self.instance = uuid.uuid4().hex[:12]  # changes on every start: the API re-registers and re-reads
        self.public_key: str | None = None
        self._sockets: list[zmq.Socket] = []
        self._securities: list[Security] = []
        self._zap: zmq.Socket | None = None
        self._results: deque[dict[str, Any]] = deque(maxlen=self.settings.results_kept)
        self._result_id = 0
        self._results_lock = threading.Lock()
        self.token_endpoint: str | None = None
        self._dispatch_later: set[str] = set()  # streams that lost a member while sending
        self._calls: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()  # other threads' work for the loop
        self._loop_thread: int | None = None
        self._asked_to_rejoin: OrderedDict[bytes, float] = OrderedDict()  # unknown connections told REJOIN, when
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._socket: zmq.Socket | None = None
        self._writer: DiskWriter | None = None
        self._written: zmq.Socket | None = None
        self._startup_error: BaseException | None = None
        self.endpoint = ""
        self.started_at = time.time()
        self._snapshot: dict[str, Any] = {}
        self._rates: dict[str, tuple[float, int, int]] = {}
        self._next_tick = 0.0
        self._next_persist = 0.0
        self._next_sync = 0.0
        self._next_snapshot = 0.0

    def start(self) -> str:
        """Bind and run the loop in a background thread; returns the bound endpoint."""
        self._thread = threading.Thread(target=self._run, name="photonstream-buffer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise self._startup_error
        return self.endpoint

    def serve_forever(self) -> None:
        """Bind and run the loop in this thread until ``stop()`` (or KeyboardInterrupt)."""
        self._run()
        if self._startup_error is not None:
            raise self._startup_error

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> BufferService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            self._recover()
            self.access.load()  # before any listener: a reconnecting client finds its grant (access.py)
            self._bind()
        except BaseException as exc:
            self._startup_error = exc
            self._close_sockets()
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop()
        except KeyboardInterrupt:
            pass
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        self._run_calls()  # a caller that queued work as the loop stopped gets its answer, not a timeout
        if self._writer is not None:
            self._writer.stop()
            self._drain_written()
        if self._written is not None:
            self._written.close(linger=0)
        for stream in self.streams.values():
            self._persist(stream)
            stream.log.close()
        self._close_sockets()
        if self.settings.data_dir is not None:
            shutil.rmtree(self.settings.data_dir / SPILL_DIR, ignore_errors=True)
