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

import contextlib
import errno
import json
import logging
import queue
import re
import secrets
import shutil
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from msgpack import packb as msgpack_pack
from msgpack import unpackb as msgpack_unpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from photonstream.buffer import protocol as P
from photonstream.buffer.access import ACCESS_FILE, ANONYMOUS, ZAP_ENDPOINT, AccessTable, zap_reply
from photonstream.buffer.credentials import Security, ensure_keypair
from photonstream.buffer.groups import Group, Policy, monotonic, parse_start, start_offset
from photonstream.buffer.log import GROUPS_FILE, META_FILE, Record, StreamLog, stream_dir
from photonstream.buffer.routing import ANNOUNCED_ID_REFUSAL, is_generated, new_router
from photonstream.config.base import one_line
from photonstream.errors import ConfigError, PhotonstreamError

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
MB = 1 << 20
GB = 1 << 30

log = logging.getLogger("photonstream.buffer")


class BufferSettings(BaseModel):
    """How the buffer binds, where it keeps data, and its budgets (bytes and seconds)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bind: str = Field("tcp://127.0.0.1:5600", description="ZeroMQ endpoint to bind (tcp://HOST:PORT, port * = any)")
    data_dir: Path | None = Field(None, description="where durable streams and spilled data go (None: memory only)")
    memory_per_stream: int = Field(1 * GB, ge=1, description="bytes of payload one stream may hold in memory")
    memory_total: int = Field(4 * GB, ge=1, description="bytes of payload all streams together may hold in memory")
    disk_per_stream: int | None = Field(None, ge=1, description="bytes one stream may hold on disk (None: no limit)")
    disk_total: int | None = Field(None, ge=1, description="bytes all streams may hold on disk (None: no limit)")
    retention_bytes: int | None = Field(
        None, ge=1, description="keep at most this many bytes per stream, oldest dropped first (None: no limit)"
    )
    retention_s: float | None = Field(None, gt=0, description="seconds a message is kept at most (None: no age limit)")
    spill: bool = Field(True, description="spill a full memory log to data_dir instead of dropping or blocking")
    segment_bytes: int = Field(256 * MB, ge=4096, description="bytes at which a new segment file is started")
    max_message_bytes: int = Field(
        1 * GB, ge=1, description="bytes one producer message may have; larger ones are refused"
    )
    ack_timeout_s: float = Field(
        30.0, gt=0, description="lossless groups: seconds before a message not acked is redelivered"
    )
    member_timeout_s: float = Field(10.0, gt=0, description="seconds a silent consumer stays a member of its group")
    fsync: bool = Field(False, description="fsync durable data every second (power-loss safety; slower)")
    io_threads: int = Field(2, ge=1, le=16, description="libzmq I/O threads (more for many connections or >10 Gb/s)")
    security: Security = Field(
        "none",
        description="security of 'bind': curve (authenticated and encrypted), token (authenticated, plaintext: "
        "inside one facility only) or none (no authentication: test/demo only)",
    )
    token_bind: str | None = Field(
        None, description="endpoint of a second listener with token security, ZAP PLAIN (None: none)"
    )
    keys_dir: Path | None = Field(
        None, description="buffer.key_secret (CURVE server pair, created if missing) and admins/*.key (admin keys)"
    )
    admin_keys: tuple[str, ...] = Field((), description="Z85 public keys of admins besides those in keys_dir/admins")
    max_groups_per_stream: int = Field(64, ge=1, description="consumer groups one stream may have (quota)")
    max_members_per_group: int = Field(256, ge=1, description="members one consumer group may have at once (quota)")
    results_kept: int = Field(
        100_000, ge=1, description="consumer results kept until the API collects them (oldest dropped beyond)"
    )

    @model_validator(mode="after")
    def _keys_for_curve(self) -> BufferSettings:
        if self.security == "curve" and self.keys_dir is None:
            raise ValueError("security curve needs keys_dir (where the buffer's key pair is kept)")
        return self

    @property
    def listeners(self) -> list[tuple[str, Security]]:
        """(endpoint to bind, security) of every listener; the first is ``bind``."""
        found: list[tuple[str, Security]] = [(self.bind, self.security)]
        if self.token_bind is not None:
            found.append((self.token_bind, "token"))
        return found

    @property
    def secured(self) -> bool:
        return any(security != "none" for _, security in self.listeners)

    @classmethod
    def build(cls, **values: Any) -> BufferSettings:
        try:
            return cls(**values)
        except ValidationError as exc:
            raise ConfigError(one_line(exc, prefix="buffer")) from None


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


class ServiceError(PhotonstreamError):
    """The buffer service cannot start (bind failed, unreadable data directory)."""

    http_status = 503


class BufferService:
    """Run with ``start()`` (a background thread, for embedding) or ``serve_forever()``; stop with ``stop()``."""

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

    # -- lifecycle ----------------------------------------------------------------------------------------
    def _admin_dir(self) -> Path | None:
        keys = self.settings.keys_dir
        return None if keys is None else keys / "admins"

    def _bind(self) -> None:
        s = self.settings
        secret_key = None
        if s.keys_dir is not None and s.secured:
            self.public_key, secret_key = ensure_keypair(s.keys_dir, "buffer")
        if s.secured:  # the ZAP handler first: a secured listener without one would admit any client
            zap = new_router(self.context)
            zap.setsockopt(zmq.LINGER, 0)
            try:
                zap.bind(ZAP_ENDPOINT)
            except zmq.ZMQError as exc:
                zap.close()
                raise ServiceError(f"buffer: cannot bind the ZAP handler ({exc}); one per ZeroMQ context") from None
            self._zap = zap
        for bind, security in s.listeners:
            sock = new_router(self.context)  # ids nobody can predict: see routing.py
            # listed at once: if setting it up fails, _close_sockets closes it (an open one hangs context.term())
            self._sockets.append(sock)
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.RCVHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            if security == "curve":
                assert self.public_key is not None and secret_key is not None
                sock.curve_server = True
                sock.curve_publickey = self.public_key.encode()
                sock.curve_secretkey = secret_key.encode()
            elif security == "token":
                sock.plain_server = True
            if security != "none":
                sock.setsockopt(zmq.ZAP_DOMAIN, f"photonstream-{security}".encode())
                sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
            try:
                sock.bind(bind)
            except zmq.ZMQError as exc:
                raise ServiceError(f"buffer: cannot bind {bind} ({exc})") from None
            self._securities.append(security)
        self._socket = self._sockets[0]
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if s.token_bind is not None:
            self.token_endpoint = self._sockets[-1].getsockopt_string(zmq.LAST_ENDPOINT)
        if self.settings.data_dir is not None:
            written = self.context.socket(zmq.PULL)
            written.bind(f"inproc://photonstream-buffer-written-{id(self)}")
            self._written = written
            self._writer = DiskWriter(self.context, f"inproc://photonstream-buffer-written-{id(self)}")

    def _recover(self) -> None:
        root = self.settings.data_dir
        if root is None:
            return
        try:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(root / SPILL_DIR, ignore_errors=True)  # spilled data of non-durable streams is gone
            metas = sorted(root.glob(f"*/*/*/{META_FILE}"))
        except OSError as exc:
            raise ServiceError(f"buffer: cannot use data directory {root} ({exc.strerror})") from None
        for meta in metas:
            log = StreamLog.recover(meta.parent, self.settings.segment_bytes)
            stream = Stream(log)
            groups_file = meta.parent / GROUPS_FILE
            if groups_file.exists():
                for state in json.loads(groups_file.read_text()).get("groups", []):
                    group = Group.from_state(log, state)
                    stream.groups[group.name] = group
            if log.start is not None:
                stream.start_bytes = _joined(log.start.frames or [])
            if (meta.parent / MULTI_PRODUCER_FILE).exists():
                # records carry the buffer's arrival numbers, not each producer's sequence: a resend could not
                # be told from new data, so refuse rather than duplicate or lose
                stream.refuse_producers = (
                    f"{log.address}: the buffer restarted while several producers wrote this durable stream; "
                    "it cannot take more data (start a new run)"
                )
            elif log.producer:
                last = log.last_transport_seq
                stream.producers[log.producer] = Producer(log.producer, None, last, acked_n=last)
            ended = meta.parent / ENDED_FILE
            if log.end is None and ended.exists():
                with contextlib.suppress(OSError, ValueError, KeyError):
                    why = json.loads(ended.read_text())
                    self._mark_ended(stream, str(why["reason"]), str(why["message"]))
            self.streams[log.address] = stream

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

    def _close_sockets(self) -> None:
        for sock in [*self._sockets, self._zap]:
            if sock is not None:
                sock.close(linger=0)
        self._sockets = []
        self._socket = self._zap = None
        if self._own_context:
            self.context.term()

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

    # -- the loop -----------------------------------------------------------------------------------------
    def _loop(self) -> None:
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        if self._written is not None:
            poller.register(self._written, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        sockets = list(enumerate(self._sockets))
        self._loop_thread = threading.get_ident()
        try:
            self._serve(poller, sockets)
        finally:
            self._loop_thread = None

    def _serve(self, poller: zmq.Poller, sockets: list[tuple[int, zmq.Socket]]) -> None:
        while not self._stop.is_set():
            self._run_calls()
            if poller.poll(self._poll_timeout_ms()):
                self._drain_written()
                self._answer_zap()
                for index, sock in sockets:
                    for _ in range(64):
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._apply_grant_change()  # before a credit could send a revoked member more
                        self._on_message(parts, index)
            self._flush_producer_acks()
            now = monotonic()
            if now >= self._next_tick:
                self._tick(now)
                self._next_tick = now + 0.05

    def _answer_zap(self) -> None:
        """Authenticate connections (ZAP requests from libzmq's handshakes) against the access table."""
        if self._zap is None:
            return
        while True:
            try:
                request = self._zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            reply = zap_reply(request, self.access)
            if reply:
                self._zap.send_multipart(reply)

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

    def _poll_timeout_ms(self) -> int:
        timeout = 0.05
        now = monotonic()
        for stream in self.streams.values():
            for group in stream.groups.values():
                at = group.wake_at()
                if at is not None:
                    timeout = min(timeout, max(0.0, at - now))
        return max(0, int(timeout * 1000))

    def _principal(self, frame: zmq.Frame, index: int) -> str:
        """Who sent a message: the User-Id the ZAP handler gave its connection (anonymous on a 'none' listener)."""
        if self._securities[index] == "none":
            return ANONYMOUS
        try:
            return str(frame.get("User-Id"))
        except zmq.ZMQError:
            return ""

    def _on_message(self, parts: list[zmq.Frame], index: int = 0) -> None:
        # the listener's index in front of the routing id: replies go out on the socket the peer came in on
        identity = bytes((index,)) + parts[0].bytes
        try:
            if not is_generated(parts[0].bytes):  # see routing.py: only ids libzmq generated act here
                raise P.ProtocolError("announced-id", ANNOUNCED_ID_REFUSAL)
            if len(parts) < 2:
                raise P.ProtocolError("protocol", "not a photonstream buffer message (protocol PSB1)")
            command, header = P.open_envelope(parts[1])
            principal = self._principal(parts[1], index)
            if command == P.PUB:
                self._on_publish(identity, principal, header, parts[2:])
            elif command == P.CRED:
                self._on_credit(identity, header)
            elif command == P.SUB:
                self._on_subscribe(identity, principal, header)
            elif command == P.HB:
                self._on_heartbeat(identity)
            elif command == P.BYE:
                self._on_bye(identity)
            elif command == P.STATS:
                self._reply(identity, P.STATS, None, [json.dumps(self._stats_for(principal)).encode()])
            elif command == P.RES:
                self._on_result(identity, principal, header, parts[2:])
            elif command == P.RESULTS:
                self._require_admin(principal, "results")
                after, limit = int(header.get("after", 0)), max(1, min(int(header.get("limit", 500)), 5000))
                items = self.results_after(after, limit)
                reply = {"i": self.instance, "last": self._result_id}
                self._reply(identity, P.RESULTS, reply, [msgpack_pack(items, use_bin_type=True)])
            elif command == P.ACL:
                self._require_admin(principal, "acl")
                self._on_acl(identity, header, parts[2:])
            elif command == P.FIN:
                self._require_admin(principal, "fin")
                addresses = header.get("s")
                if not isinstance(addresses, list):
                    raise ConfigError("fin: s must be a list of stream addresses")
                reason, message = self._checked_end(addresses, header.get("r"), header.get("m", ""))
                ended = sum(self._end_stream(a, reason, message) for a in addresses)
                self._reply(identity, P.FIN, {"ok": True, "n": ended})
            else:
                raise P.ProtocolError("unknown-command", f"unknown command {command!r}")
        except P.ProtocolError as exc:
            self._refuse(identity, exc.code, str(exc))
        except ConfigError as exc:
            self._refuse(identity, "bad-request", str(exc))
        except (TypeError, ValueError, ArithmeticError, LookupError) as exc:  # e.g. int(inf) in a header field
            self._refuse(identity, "malformed", f"malformed request ({type(exc).__name__}: {exc})")
        except Exception as exc:  # one peer's message must never stop the loop that serves every stream
            log.exception("buffer: unexpected error handling a message")
            self._refuse(identity, "internal", f"internal error ({type(exc).__name__}); the message was dropped")

    def _refuse(self, identity: bytes, code: str, message: str, header: dict[str, Any] | None = None) -> None:
        self.rejected[code] += 1
        with contextlib.suppress(zmq.ZMQError):
            self._reply(identity, P.ERR, {**(header or {}), "c": code, "m": message})

    def _reply(self, identity: bytes, command: bytes, header: dict[str, Any] | None, frames: list[Any] = ()) -> bool:
        sock = self._sockets[identity[0]]
        try:
            sock.send_multipart([identity[1:], P.envelope(command, header), *frames], flags=zmq.NOBLOCK, copy=False)
            return True
        except zmq.ZMQError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.EAGAIN):
                self._member_gone(identity)
                return False
            raise

    # -- access control and results -------------------------------------------------------------------------
    def _require_admin(self, principal: str, what: str) -> None:
        if not self.access.is_admin(principal):
            raise P.ProtocolError("forbidden", f"{what}: only the buffer's admins (the API) may do this")

    def _on_acl(self, identity: bytes, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        op = header.get("op")
        body = msgpack_unpack(payload[0].bytes, raw=False) if payload else []
        if op == "register":
            self.access.register(body)
        elif op == "sync":
            self.access.sync(body)
        elif op == "drop":
            self.access.drop([str(a) for a in body])
        else:
            raise ConfigError(f"acl: op {op!r} is not one of register, sync, drop")
        self._reply(identity, P.ACL, {"ok": True, "i": self.instance, "n": len(self.access.addresses())})

    def _on_result(self, identity: bytes, principal: str, header: dict[str, Any], payload: list[zmq.Frame]) -> None:
        address = header.get("s")
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise P.ProtocolError("bad-address", f"stream address {address!r} is not experiment/run/stream-id")
        if not self.access.may(principal, address, "consume"):
            raise P.ProtocolError("forbidden", f"{address}: this credential may not publish results for this stream")
        size = sum(len(f) for f in payload)
        if len(payload) != 1 or size > MAX_RESULT_BYTES:
            raise P.ProtocolError("malformed", f"{address}: a result is one frame of at most {MAX_RESULT_BYTES} bytes")
        frames = header.get("f")
        item = {
            "s": address,
            "t": str(header.get("t", "custom"))[:64],
            "g": str(header.get("g", ""))[:128],
            "w": str(header.get("w", ""))[:128],
            "f": [int(frames[0]), int(frames[1])] if isinstance(frames, list | tuple) and len(frames) == 2 else None,
            "at": time.time(),
            "by": principal,
            "d": payload[0].bytes,
        }
        with self._results_lock:
            self._result_id += 1
            item["id"] = self._result_id
            self._results.append(item)
        self._reply(identity, P.RACK, {"id": item["id"], "n": header.get("n")})

    def results_after(self, after: int, limit: int = 500) -> list[dict[str, Any]]:
        """Results with an id above ``after``, oldest first (safe to call from any thread)."""
        with self._results_lock:
            if not self._results or self._results[-1]["id"] <= after:
                return []
            first = self._results[0]["id"]
            start = max(0, after - first + 1)
            return [self._results[i] for i in range(start, min(len(self._results), start + limit))]

    # -- ending streams whose producer is gone -------------------------------------------------------------
    def end_streams(self, addresses: list[str], reason: str, message: str, timeout_s: float = 5.0) -> int:
        """End these streams with ``reason`` (failed | cancelled) and a one-line message (FIN in protocol.py), from
        any thread; returns how many ended now (one that had already ended is left as it was)."""
        reason, message = self._checked_end(addresses, reason, message)
        return self._in_loop(lambda: sum(self._end_stream(a, reason, message) for a in addresses), timeout_s)

    def _in_loop(self, call: Callable[[], int], timeout_s: float) -> int:
        """Run ``call`` in the I/O loop's thread (the only one that touches streams) and return its result."""
        if self._loop_thread is None or self._loop_thread == threading.get_ident():
            return call()  # the loop is not running (or this is it): nobody else touches the streams
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = call()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        self._calls.put(run)
        if not done.wait(timeout_s):
            raise ServiceError(f"buffer: the service loop did not answer within {timeout_s:g} s")
        if "error" in box:
            raise box["error"]
        return int(box["value"])

    def _run_calls(self) -> None:
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            self._apply_grant_change()  # a grant withdrawn before the call was queued counts first (an end, say)
            call()

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

    # -- producers ----------------------------------------------------------------------------------------
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

    # -- budgets ------------------------------------------------------------------------------------------
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

    # -- consumers ----------------------------------------------------------------------------------------
    def _on_subscribe(self, identity: bytes, principal: str, header: dict[str, Any]) -> None:
        address = header.get("s")
        if not isinstance(address, str) or not ADDRESS.match(address):
            raise ConfigError(f"stream: {address!r} is not experiment/run/stream-id")
        if not self.access.may(principal, address, "consume"):
            raise P.ProtocolError("forbidden", f"{address}: this credential may not read this stream")
        group_name = str(header.get("g", "default"))
        if not group_name or len(group_name) > 128:
            raise ConfigError("group: must be 1-128 characters")
        policy = Policy.parse(str(header.get("pol", "lossless")))
        start = parse_start(header.get("st", "beginning"))
        member_id = header.get("m") or f"anonymous-{secrets.token_hex(6)}"  # never the connection's routing id
        if not isinstance(member_id, str) or len(member_id) > MAX_MEMBER_ID:
            raise ConfigError(f"member: must be a string of at most {MAX_MEMBER_ID} characters")
        incarnation = header.get("i")
        incarnation = incarnation if isinstance(incarnation, str) and len(incarnation) <= 64 else ""
        acked = _offsets(header, "a")
        credit = max(1, min(int(header.get("c", 16)), P.MAX_CREDIT))
        stream = self.streams.get(address)
        if stream is None:
            stream = Stream(StreamLog(address))  # a consumer may come before the producer
            self.streams[address] = stream
        group = stream.groups.get(group_name)
        quota = self.settings.max_groups_per_stream if group is None else self.settings.max_members_per_group
        replacing = set() if group is None else self._replaced_by(identity, group, member_id, incarnation, principal)
        used = len(stream.groups) if group is None else len(group.members) - len(replacing)
        if used >= quota:
            what = "max_groups_per_stream: the stream has" if group is None else "max_members_per_group: the group has"
            unit = "consumer groups" if group is None else "members"
            raise P.ProtocolError("quota", f"{address}: {what} {used} {unit} (limit {quota})")
        if group is None:
            group = Group(group_name, policy, stream.log, origin=start_offset(stream.log, start))
            stream.groups[group_name] = group
            stream.groups_dirty = True
        elif group.policy != policy:
            raise ConfigError(
                f"policy: group {group_name!r} of {address} already uses policy {group.policy}, not {policy}"
            )
        self._asked_to_rejoin.pop(identity, None)
        entry = self._members.get(identity)
        if entry is not None and entry[1] is not group:
            self._forget_member(identity)
        same_stream = stream.started and header.get("e") == stream.epoch
        if same_stream and acked:
            self._settle(stream, group, acked)
        now = monotonic()
        _, replaced = group.join(identity, member_id, credit, now, incarnation=incarnation, principal=principal)
        for old in replaced:
            self._members.pop(old, None)
            self._principals.pop(old, None)
        self._members[identity] = (stream, group)
        self._principals[identity] = principal
        if stream.started:
            self._greet(stream, group, identity)
            self._dispatch(stream)
        elif stream.log.end is not None:  # ended before it opened: nothing to read but the end
            self._send_end(stream, group)

    @staticmethod
    def _replaced_by(identity: bytes, group: Group, member_id: str, incarnation: str, principal: str) -> set[bytes]:
        """The live members of ``group`` a subscription replaces (its own, or its session's older connection)."""
        mine = {m.identity for m in group.session_of(member_id, incarnation, principal)} | {identity}
        return mine & group.members.keys()

    def _settle(self, stream: Stream, group: Group, offsets: list[int]) -> None:
        """Acks (idempotent); a moved committed offset is persisted and may unblock the producer."""
        before = group.committed
        group.ack(offsets)
        if group.committed != before:
            stream.groups_dirty = True
            if stream.blocked:
                self._enforce(stream)

    def _greet_waiting_members(self, stream: Stream) -> None:
        for group in stream.groups.values():
            for identity in list(group.members):
                self._greet(stream, group, identity)
        self._dispatch(stream)

    def _greet(self, stream: Stream, group: Group, identity: bytes) -> None:
        """Send a (new) member the start message and the calibration in force for its group."""
        log = stream.log
        assert log.start is not None
        start = {"s": log.address, "g": group.name, "z": log.serializer, "o": group.cursor, "pol": str(group.policy),
                 "e": stream.epoch}  # fmt: skip
        if not self._reply(identity, P.START, start, log.start.frames or []):
            return
        if group.calibrations_sent:
            offset, record = log.calibrations[group.calibrations_sent - 1]
            self._reply(identity, P.CAL, {"o": offset, "q": record.seq}, record.frames or [])

    def _drop_unauthorized_members(self) -> None:
        """After a grant change (a stream's owner revoked): members that may no longer read their stream leave, told
        why, and get nothing more."""
        for identity, (stream, _) in list(self._members.items()):
            address = stream.log.address
            if not self.access.may(self._principals.get(identity, ""), address, "consume"):
                self._forget_member(identity)
                self._dispatch_later.add(address)
                self._refuse(identity, "forbidden", f"{address}: this credential may no longer read this stream")

    def _on_credit(self, identity: bytes, header: dict[str, Any]) -> None:
        epoch = header.get("e")
        if epoch is not None and (not isinstance(epoch, int) or isinstance(epoch, bool)):
            raise P.ProtocolError("malformed", "CRED field 'e' must be the stream epoch (an integer) or absent")
        entry = self._members.get(identity)
        if entry is None or identity not in entry[1].members:
            held = self._held_by(identity)
            if held is not None:  # set aside (a send to it failed) while its acks were on their way: they count
                self._settle_acks(*held, header, epoch)
                self._dispatch(held[0])
            self._ask_to_rejoin(identity)
            return
        stream, group = entry
        member = group.members[identity]
        member.last_seen = monotonic()
        self._settle_acks(stream, group, header, epoch)
        member.give_credit(int(header.get("c", 0)))  # after the acks: what they settle no longer counts against it
        self._dispatch(stream)

    def _settle_acks(self, stream: Stream, group: Group, header: dict[str, Any], epoch: int | None) -> None:
        acked = header.get("a")
        if acked and group.policy.lossless and (epoch is None or epoch == stream.epoch):
            self._settle(stream, group, [int(o) for o in acked])  # acks of another opening name other messages

    def _held_by(self, identity: bytes) -> tuple[Stream, Group] | None:
        """The stream and group where this connection's member is set aside (its connection seemed gone)."""
        return next(((s, g) for s in self.streams.values() for g in s.groups.values() if identity in g.held), None)

    def _on_heartbeat(self, identity: bytes) -> None:
        entry = self._members.get(identity)
        if entry is None or identity not in entry[1].members:
            self._ask_to_rejoin(identity)
            return
        entry[1].members[identity].last_seen = monotonic()
        self._reply(identity, P.HB, {})

    def _ask_to_rejoin(self, identity: bytes) -> None:
        """Tell an unknown consumer connection to subscribe again, once: what it queued while it was cut off (a
        heartbeat every beat) arrives in a burst, and one REJOIN each would make it subscribe again and again."""
        if identity in self._asked_to_rejoin:
            return
        self._asked_to_rejoin[identity] = monotonic()
        while len(self._asked_to_rejoin) > MAX_ASKED_TO_REJOIN:
            self._asked_to_rejoin.popitem(last=False)
        self._reply(identity, P.REJOIN, {})

    def _on_bye(self, identity: bytes) -> None:
        entry = self._forget_member(identity)
        if entry is None:  # set aside already: a send to it failed while its goodbye was on its way
            entry = self._held_by(identity)
            if entry is not None:
                entry[1].leave(identity)  # it left: its messages go to the group now, not at the member timeout
        if entry is not None:
            self._dispatch(entry[0])

    def _forget_member(self, identity: bytes) -> tuple[Stream, Group] | None:
        self._principals.pop(identity, None)
        entry = self._members.pop(identity, None)
        if entry is not None:
            entry[1].leave(identity)
        return entry

    def _member_gone(self, identity: bytes) -> None:
        """Its connection is gone: detach it (its unacked messages wait for a rejoin until the member timeout)."""
        self._principals.pop(identity, None)
        entry = self._members.pop(identity, None)
        if entry is not None:
            entry[1].detach(identity)
            self._dispatch_later.add(entry[0].log.address)

    # -- delivery -----------------------------------------------------------------------------------------
    def _dispatch(self, stream: Stream) -> None:
        if not stream.started:
            return
        log = stream.log
        now = monotonic()
        ack_timeout = self.settings.ack_timeout_s
        for group in list(stream.groups.values()):
            while True:
                pick = group.next_delivery(now, ack_timeout)
                if pick is None:
                    break
                member, offset = pick
                record = log.get(offset)
                if record is None:
                    group.lost(member, offset)
                    continue
                self._send_calibrations(stream, group, upto=offset)
                try:
                    frames = log.payload(record)
                except KeyError as exc:  # released from memory with nowhere to go: nobody can have it now
                    logging.getLogger("photonstream.buffer").warning(  # ``log`` is the stream's here
                        "buffer: %s offset %d lost for group %s: %s", log.address, offset, group.name, exc
                    )
                    group.lost(member, offset)
                    continue
                except OSError as exc:  # its segment cannot be read now: keep it, the next tick tries again
                    if now - stream.read_warned_at > READ_WARN_EVERY_S:
                        stream.read_warned_at = now
                        logging.getLogger("photonstream.buffer").warning(
                            "buffer: %s offset %d not readable for group %s (will retry): %s",
                            log.address, offset, group.name, exc,
                        )  # fmt: skip
                    group.unsent(member, offset)
                    break
                header = {"o": offset, "q": record.seq, "k": record.kind, "h": log.head, "x": group.skipped}
                if self._reply(member.identity, P.MSG, header, frames):
                    group.bytes_out += record.nbytes
                else:  # not sent: counted neither as delivered nor as redelivered, and the next member may have it
                    group.unsent(member, offset)
            if group.drained():
                self._send_end(stream, group)
        if self._dispatch_later:
            pending = [self.streams[a] for a in self._dispatch_later if a in self.streams]
            self._dispatch_later = set()
            for other in pending:
                self._dispatch(other)

    def _send_calibrations(self, stream: Stream, group: Group, upto: int | None) -> None:
        calibrations = stream.log.calibrations
        while group.calibrations_sent < len(calibrations):
            offset, record = calibrations[group.calibrations_sent]
            if upto is not None and offset > upto:
                break
            group.calibrations_sent += 1
            for identity in list(group.members):
                self._reply(identity, P.CAL, {"o": offset, "q": record.seq}, record.frames or [])

    def _send_end(self, stream: Stream, group: Group) -> None:
        log = stream.log
        assert log.end is not None
        group.end_sent = True
        waiting = [m for m in group.members.values() if not m.end_sent]
        if not waiting:
            return
        self._send_calibrations(stream, group, upto=None)
        header = {"o": log.head, "x": group.skipped, "r": group.redelivered, "e": group.expired}
        if stream.ended_by is not None:
            header["rs"], header["rm"] = stream.ended_by
        for member in waiting:
            member.end_sent = True
            self._reply(member.identity, P.END, header, log.end.frames or [])

    # -- timers -------------------------------------------------------------------------------------------
    def _apply_grant_change(self) -> None:
        """Drop the members a new access snapshot no longer admits (a cheap identity check when none came)."""
        if self.access.snapshot is not self._access_seen:
            self._access_seen = self.access.snapshot
            self._drop_unauthorized_members()

    def _tick(self, now: float) -> None:
        self._apply_grant_change()
        member_deadline = now - self.settings.member_timeout_s
        while self._asked_to_rejoin and next(iter(self._asked_to_rejoin.values())) < member_deadline:
            self._asked_to_rejoin.popitem(last=False)
        for stream in list(self.streams.values()):
            touched = False
            for group in stream.groups.values():
                for identity, member in list(group.members.items()):
                    if member.last_seen < member_deadline:
                        self._forget_member(identity)
                        touched = True
                if group.release_held(member_deadline):
                    touched = True
                if group.expire_unacked(now):
                    touched = True
            if stream.blocked or self.settings.retention_s is not None:
                self._enforce(stream)
            if stream.blocked and stream.producers and now - stream.wait_sent_at > 0.5:
                stream.wait_sent_at = now
                for producer in list(stream.producers.values()):
                    if producer.identity is not None:
                        self._reply(producer.identity, P.WAIT, {"s": stream.log.address, "r": stream.blocked})
            if touched or stream.started:
                self._dispatch(stream)
        if now >= self._next_persist:
            self._next_persist = now + 0.2
            for stream in self.streams.values():
                if stream.groups_dirty:
                    self._persist(stream)
        if self.settings.fsync and now >= self._next_sync:
            self._next_sync = now + 1.0
            for stream in self.streams.values():
                if stream.log.durable:
                    stream.log.sync()
        if now >= self._next_snapshot:
            self._next_snapshot = now + 1.0
            self._snapshot = self.stats_now()

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

    # -- state --------------------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The state as of the last second (safe to call from any thread)."""
        return self._snapshot or {"service": {"endpoint": self.endpoint}, "streams": {}}

    def _stats_for(self, principal: str) -> dict[str, Any]:
        """The state, limited to the streams ``principal`` may see (admins: all)."""
        state = self.stats_now()
        if not self.access.is_admin(principal):
            visible = {a: v for a, v in state["streams"].items() if self.access.visible(principal, a)}
            state = {"service": {"endpoint": self.endpoint}, "streams": visible}
        return state

    def stats_now(self) -> dict[str, Any]:
        """Per stream and group: messages and bytes in and out, rates, lag, memory and disk fill, losses."""
        s = self.settings
        now = time.monotonic()
        streams: dict[str, Any] = {}
        for address, stream in self.streams.items():
            log = stream.log
            rate_msgs, rate_bytes = self._rate(f"in:{address}", now, log.messages_in, log.bytes_in)
            groups: dict[str, Any] = {}
            for name, g in stream.groups.items():
                g_msgs, g_bytes = self._rate(f"out:{address}:{name}", now, g.delivered, g.bytes_out)
                groups[name] = {
                    "policy": str(g.policy),
                    "members": len(g.members),
                    "held_members": len(g.held),
                    "rejoins": g.rejoins,
                    "cursor": g.cursor,
                    "committed": g.committed if g.policy.lossless else g.cursor,
                    "lag": g.lag,
                    "delivered": g.delivered,
                    "bytes_out": g.bytes_out,
                    "rate_msgs": g_msgs,
                    "rate_bytes": g_bytes,
                    "skipped": g.skipped,
                    "expired": g.expired,
                    "redelivered": g.redelivered,
                    "inflight": len(g.inflight),
                    "member_credit": {m.member_id: m.credit for m in g.members.values()},
                    "member_inflight": {m.member_id: len(m.inflight) for m in g.members.values()},
                    "ended": g.end_sent,
                }
            streams[address] = {
                "durable": log.durable,
                "serializer": log.serializer,
                "started": stream.started,
                "ended": log.end is not None,
                "ended_by": list(stream.ended_by) if stream.ended_by else None,
                "first": log.first,
                "head": log.head,
                "messages_in": log.messages_in,
                "bytes_in": log.bytes_in,
                "rate_msgs": rate_msgs,
                "rate_bytes": rate_bytes,
                "memory_bytes": log.mem_bytes,
                "memory_fill": log.mem_bytes / s.memory_per_stream,
                "disk_bytes": log.disk_bytes,
                "disk_fill": log.disk_bytes / s.disk_per_stream if s.disk_per_stream else None,
                "blocked": stream.blocked,
                "producers": len(stream.producers),
                "producer_errors": stream.errors,
                "groups": groups,
            }
        return {
            "service": {
                "endpoint": self.endpoint,
                "data_dir": str(s.data_dir) if s.data_dir else None,
                "uptime_s": round(time.time() - self.started_at, 3),
                "memory_bytes": self._memory_total(),
                "memory_budget": s.memory_total,
                "disk_bytes": self._disk_total(),
                "disk_budget": s.disk_total,
                "streams": len(self.streams),
                "members": len(self._members),
                "instance": self.instance,
                "listeners": [{"security": sec, "endpoint": ep} for sec, ep in self._listener_endpoints()],
                "auth_refused": self.access.refused,
                "rejected": dict(self.rejected),
            },
            "streams": streams,
        }

    def _listener_endpoints(self) -> list[tuple[str, str]]:
        pairs = zip(self._securities, self._sockets, strict=True)
        return [(security, sock.getsockopt_string(zmq.LAST_ENDPOINT)) for security, sock in pairs]

    def _rate(self, key: str, now: float, messages: int, nbytes: int) -> tuple[float, float]:
        previous = self._rates.get(key)
        self._rates[key] = (now, messages, nbytes)
        if previous is None or now - previous[0] < 1e-3:
            return 0.0, 0.0
        dt = now - previous[0]
        return round((messages - previous[1]) / dt, 3), round((nbytes - previous[2]) / dt, 1)
