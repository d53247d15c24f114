"""``photonstream bench buffer``: the buffer's throughput and latency against ZeroMQ, NATS JetStream and Redis.

Every case runs producer, relay and consumers in separate processes on this machine, over loopback TCP, with
payloads of ``frame_mb`` megabytes (10^6 bytes) for ``seconds`` seconds; GB/s is 10^9 payload bytes per second
as received by one consumer (the first to the last message it got).

- raw_zmq: PUSH → PULL, one hop
- zmq_proxy: PUSH → ``zmq.proxy`` (libzmq's own, in C) → PULL
- buffer_mem / buffer_disk: the ``buffer`` handler → BufferService (memory / ``durable`` on disk) → subscribe()
- buffer_plain / buffer_auth / buffer_curve: the same in memory on a listener without authentication, with token
  authentication (ZAP PLAIN, data in clear), and with CURVE (authenticated and encrypted), side by side
- buffer_bcast4 vs zmq_pub4: the buffer to 4 groups (one consumer each) vs PUB to 4 SUBs (GB/s per consumer)
- nats / redis / buffer_1mb: always 1 MB frames: NATS JetStream (memory storage, async acked publish, ordered
  push consumer) at 127.0.0.1:4222, Redis Streams (pipelined XADD, XREAD) at 127.0.0.1:6379, our buffer
- latency: producer → buffer → consumer p50/p99 of 1 MB frames paced at ``--rate-hz``; when the machine
  delivers less than 95 % of that rate it says "saturated at N/s" instead (latencies would be queueing)
- disk_write: plain sequential writes of the same block size into a temporary file (durable's bound)
- size sweep: messages/s of the buffer in memory and of raw PUSH → PULL at 1 KiB, 16 KiB, 256 KiB and 4 MiB
- durable latency: p99 of a durable stream paced at 200 Hz (1 MB), without and with retention deleting 16 MiB
  segments as it goes (the deletion must not stall delivery)

``--peer fastcache=BUILD_DIR`` adds LCLStream's relay beside the buffer's at 2 MiB (benchmarks/_buffer_peers.py).

Cases run in ``--rounds`` interleaved rounds (every case once per round); figures are medians over rounds and
every ratio is the median over rounds of the two cases' figures in the same round, with min and max, naming
its numerator and denominator. The load average is printed before and after.

    python -m benchmarks.buffer [--frame-mb 4] [--seconds 3] [--rounds 3] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from benchmarks._report import machine, report
from benchmarks._rounds import load_average, median, ratio

MB = 1_000_000
NATS_URL = "nats://127.0.0.1:4222"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
STREAM = "bench/1/frames"
END = b"END"
MEMORY = 256 << 20  # the buffer keeps the newest 256 MiB of the stream in memory (replay window)
CREDIT = 32  # messages a consumer lets the buffer send ahead
WINDOW = 16  # messages the producer sends before it waits for the buffer's ack

_ctx = mp.get_context("spawn")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _result(nbytes: int, count: int, first: float, last: float, **extra: Any) -> dict[str, Any]:
    seconds = max(last - first, 1e-9)
    return {"bytes": nbytes, "messages": count, "seconds": seconds, "gbps": nbytes / seconds / 1e9, **extra}


# -- raw ZeroMQ ------------------------------------------------------------------------------------------------
def _zmq_sender(endpoint: str, kind: int, bind: bool, frame_bytes: int, seconds: float, ready: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, -1)
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    ready.wait(30)
    if kind == zmq.PUB:
        time.sleep(0.3)  # subscriptions propagate
    payload = bytes(frame_bytes)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        for _ in range(8):
            sock.send(payload, copy=False)
    for _ in range(1 if kind != zmq.PUB else 20):
        sock.send(END)
        if kind == zmq.PUB:
            time.sleep(0.05)
    sock.close()
    ctx.term()


def _zmq_receiver(endpoint: str, kind: int, bind: bool, ready: Any, out: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    if kind == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, b"")
    if bind:
        sock.bind(endpoint)
    else:
        sock.connect(endpoint)
    ready.wait(30)
    count = nbytes = 0
    first = last = 0.0
    while sock.poll(20_000):
        frame = sock.recv(copy=False)
        now = time.perf_counter()
        if len(frame) == len(END) and frame.bytes == END:
            break
        if count == 0:
            first = now
        else:
            nbytes += len(frame)
        count += 1
        last = now
    out.put(_result(nbytes, max(count - 1, 0), first, last))
    sock.close()
    ctx.term()


def _proxy(front: str, back: str) -> None:
    ctx = zmq.Context()
    frontend, backend = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    frontend.bind(front)
    backend.bind(back)
    zmq.proxy(frontend, backend)


def _run_processes(targets: list[tuple[Callable[..., None], tuple[Any, ...]]], out: Any, n_results: int) -> list[Any]:
    procs = [_ctx.Process(target=t, args=a, daemon=True) for t, a in targets]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in range(n_results)]
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.terminate()
    return results


def raw_zmq(frame_bytes: int, seconds: float) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ready, out = _ctx.Event(), _ctx.Queue()
    procs = [(_zmq_receiver, (endpoint, zmq.PULL, True, ready, out)),
             (_zmq_sender, (endpoint, zmq.PUSH, False, frame_bytes, seconds, ready))]  # fmt: skip
    ready.set()
    return _run_processes(procs, out, 1)[0]


def zmq_proxy(frame_bytes: int, seconds: float) -> dict[str, Any]:
    front, back = f"tcp://127.0.0.1:{_free_port()}", f"tcp://127.0.0.1:{_free_port()}"
    ready, out = _ctx.Event(), _ctx.Queue()
    proxy = _ctx.Process(target=_proxy, args=(front, back), daemon=True)
    proxy.start()
    time.sleep(0.5)
    procs = [(_zmq_receiver, (back, zmq.PULL, False, ready, out)),
             (_zmq_sender, (front, zmq.PUSH, False, frame_bytes, seconds, ready))]  # fmt: skip
    ready.set()
    try:
        return _run_processes(procs, out, 1)[0]
    finally:
        proxy.terminate()
        proxy.join(5)


def zmq_pub(frame_bytes: int, seconds: float, subscribers: int = 4) -> dict[str, Any]:
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    ready, out = _ctx.Event(), _ctx.Queue()
    procs = [(_zmq_receiver, (endpoint, zmq.SUB, False, ready, out)) for _ in range(subscribers)]
    procs.insert(0, (_zmq_sender, (endpoint, zmq.PUB, True, frame_bytes, seconds, ready)))
    ready.set()
    results = _run_processes(procs, out, subscribers)
    return _per_consumer(results)


def _per_consumer(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"gbps": statistics.mean(r["gbps"] for r in results), "messages": [r["messages"] for r in results],
            "consumers": len(results)}  # fmt: skip


# -- the buffer ------------------------------------------------------------------------------------------------
def _buffer_service(
    bind: str,
    data_dir: str | None,
    io_threads: int,
    ready: Any,
    security: str = "none",
    grant: Any = None,
    retention_bytes: int = 2 << 30,
    segment_bytes: int = 256 * MB,
) -> None:
    from photonstream.buffer import BufferService, BufferSettings
    from photonstream.buffer.service import tune_allocator

    tune_allocator()  # as `photonstream buffer serve` does
    settings = BufferSettings(
        bind=bind,
        data_dir=Path(data_dir) if data_dir else None,
        memory_per_stream=MEMORY,
        memory_total=2 << 30,
        retention_bytes=retention_bytes,
        segment_bytes=segment_bytes,
        io_threads=io_threads,
        security=security,
        keys_dir=Path(data_dir) / "keys" if data_dir and security != "none" else None,
    )
    service = BufferService(settings)
    service.start()
    if grant is not None:
        service.access.register([grant])
    ready.set()
    while True:
        time.sleep(1)


def _buffer_producer(
    endpoint: str,
    frame_bytes: int,
    seconds: float,
    durable: bool,
    rate_hz: float,
    window: int,
    go: Any,
    credentials: str | None = None,
) -> None:
    from photonstream.buffer.credentials import Credentials
    from photonstream.frames import EndMessage, Frame, StartMessage
    from photonstream.handlers.buffer import BufferHandler, BufferOptions
    from photonstream.serializers.base import create

    go.wait(60)
    serializer = create("msgpack")
    link = Credentials.from_json(credentials) if credentials else None
    options = BufferOptions(address=endpoint, durable=durable, send_timeout_s=60, window=window,
                            security=link.security if link else "none")  # fmt: skip
    handler = BufferHandler(options, credentials=link)
    handler.open()
    experiment, run, stream_id = STREAM.split("/")
    start = StartMessage(stream_id=stream_id, experiment=experiment, run=int(run), serializer="msgpack", seq=0)
    handler.handle(start, serializer.encode(start))
    payload = bytes(frame_bytes)
    frame = Frame(event=0, arrays={})
    seq = 1
    began = time.perf_counter()
    deadline = began + seconds
    period = 1.0 / rate_hz if rate_hz else 0.0
    while (now := time.perf_counter()) < deadline:
        if period:
            due = began + (seq - 1) * period
            if due > now:
                time.sleep(due - now)
        frame.seq = seq
        stamp = time.perf_counter_ns().to_bytes(8, "little")
        handler.handle(frame, [stamp, payload])
        seq += 1
    end = EndMessage(stream_id=stream_id, events_sent=seq - 1, seq=seq)
    handler.handle(end, serializer.encode(end))
    handler.close()


def _buffer_consumer(endpoint: str, group: str, credit: int, out: Any, credentials: str | None = None) -> None:
    from photonstream.buffer.credentials import Credentials
    from photonstream.client import subscribe

    link = Credentials.from_json(credentials) if credentials else None
    sub = subscribe(endpoint, STREAM, group=group, credit=credit, decode=False, timeout_s=60, credentials=link)
    count = nbytes = 0
    first = last = 0.0
    latencies: list[float] = []
    for delivery in sub:
        if delivery.kind != "event":
            continue
        now_ns = time.perf_counter_ns()
        now = now_ns / 1e9
        latencies.append((now_ns - int.from_bytes(delivery.frames[0].bytes, "little")) / 1e6)
        if count == 0:
            first = now
        else:
            nbytes += len(delivery.frames[1])
        count += 1
        last = now
    latencies.sort()
    pick = (lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))]) if latencies else (lambda q: 0.0)
    out.put(_result(nbytes, max(count - 1, 0), first, last, p50_ms=pick(0.50), p99_ms=pick(0.99)))


def buffer_case(
    frame_bytes: int,
    seconds: float,
    durable: bool = False,
    groups: int = 1,
    rate_hz: float = 0.0,
    credit: int = CREDIT,
    window: int = WINDOW,
    io_threads: int = 2,
    security: str = "none",
    retention_bytes: int = 2 << 30,
    segment_bytes: int = 256 * MB,
) -> dict[str, Any]:
    """``security``: none, token (authenticated, plaintext) or curve (authenticated, encrypted)."""
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as data_dir:
        ready, go, out = _ctx.Event(), _ctx.Event(), _ctx.Queue()
        grant, consumer, producer = _stream_credentials(security)
        service = _ctx.Process(
            target=_buffer_service,
            args=(endpoint, data_dir, io_threads, ready, security, grant, retention_bytes, segment_bytes),
            daemon=True,
        )
        service.start()
        ready.wait(60)
        consumer_json, producer_json = _link_json(security, Path(data_dir) / "keys", consumer, producer)
        procs = [(_buffer_consumer, (endpoint, f"g{i}", credit, out, consumer_json)) for i in range(groups)]
        procs.append((_buffer_producer, (endpoint, frame_bytes, seconds, durable, rate_hz, window, go, producer_json)))
        time.sleep(0.3)
        go.set()
        try:
            results = _run_processes(procs, out, groups)
        finally:
            service.terminate()
            service.join(10)
    if groups == 1:
        return {**results[0], "rate_hz": rate_hz}
    return _per_consumer(results)


def _stream_credentials(security: str) -> tuple[dict[str, Any] | None, tuple[str, str], tuple[str, str]]:
    """The stream's grant and its consumer's and producer's secrets (CURVE pairs or tokens), as the API makes them."""
    from photonstream.buffer.credentials import token_hash

    if security == "none":
        return None, ("", ""), ("", "")
    if security == "curve":
        consumer = tuple(k.decode() for k in zmq.curve_keypair())
        producer = tuple(k.decode() for k in zmq.curve_keypair())
        grant = {"addresses": [STREAM], "consumers": [f"curve:{consumer[0]}"], "producers": [f"curve:{producer[0]}"]}
        return grant, consumer, producer  # type: ignore[return-value]
    consumer, producer = ("c.bench", "consumer-secret"), ("p.bench", "producer-secret")
    tokens = {consumer[0]: token_hash(consumer[1]), producer[0]: token_hash(producer[1])}
    grant = {"addresses": [STREAM], "consumers": [f"token:{consumer[0]}"], "producers": [f"token:{producer[0]}"],
             "tokens": tokens}  # fmt: skip
    return grant, consumer, producer


def _link_json(
    security: str, keys_dir: Path, consumer: tuple[str, str], producer: tuple[str, str]
) -> tuple[str | None, str | None]:
    from photonstream.buffer.credentials import Credentials, load_public_key

    if security == "none":
        return None, None
    if security == "token":
        return Credentials.token(*consumer).to_json(), Credentials.token(*producer).to_json()
    server = load_public_key(keys_dir / "buffer.key")
    return Credentials.curve(server, *consumer).to_json(), Credentials.curve(server, *producer).to_json()


# -- NATS JetStream and Redis Streams ------------------------------------------------------------------------
def _nats_producer(frame_bytes: int, seconds: float, go: Any) -> None:
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def main() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        go.wait(60)
        payload = bytes(frame_bytes)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(8):
                await js.publish_async("bench.frames", payload)
            await js.publish_async_completed()
        await js.publish("bench.frames", END)
        await nc.close()

    del StorageType, StreamConfig
    asyncio.run(main())


def _nats_consumer(ready: Any, out: Any) -> None:
    import nats

    async def main() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        sub = await js.subscribe("bench.frames", ordered_consumer=True, pending_bytes_limit=1 << 30)
        ready.set()
        count = nbytes = 0
        first = last = 0.0
        while True:
            msg = await sub.next_msg(timeout=30)
            now = time.perf_counter()
            if msg.data == END:
                break
            if count == 0:
                first = now
            else:
                nbytes += len(msg.data)
            count += 1
            last = now
        out.put(_result(nbytes, max(count - 1, 0), first, last))
        await nc.close()

    asyncio.run(main())


def nats_case(frame_bytes: int, seconds: float) -> dict[str, Any]:
    import nats
    from nats.js.api import StorageType, StreamConfig

    async def setup() -> None:
        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream("PHOTONSTREAM_BENCH")
        config = StreamConfig(name="PHOTONSTREAM_BENCH", subjects=["bench.frames"], storage=StorageType.MEMORY,
                              max_bytes=2 << 30, max_msg_size=frame_bytes + 1024)  # fmt: skip
        await js.add_stream(config)
        await nc.close()

    async def teardown() -> None:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().delete_stream("PHOTONSTREAM_BENCH")
        await nc.close()

    asyncio.run(setup())
    ready, out = _ctx.Event(), _ctx.Queue()
    consumer = _ctx.Process(target=_nats_consumer, args=(ready, out), daemon=True)
    consumer.start()
    ready.wait(30)
    try:
        return _run_processes([(_nats_producer, (frame_bytes, seconds, ready))], out, 1)[0]
    finally:
        consumer.join(5)
        asyncio.run(teardown())


def _redis_producer(key: str, frame_bytes: int, seconds: float, go: Any) -> None:
    import redis

    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    go.wait(60)
    payload = bytes(frame_bytes)
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pipe = client.pipeline(transaction=False)
        for _ in range(8):
            pipe.xadd(key, {"d": payload}, maxlen=2000, approximate=True)
        pipe.execute()
    client.xadd(key, {"d": END})


def _redis_consumer(key: str, ready: Any, out: Any) -> None:
    import redis

    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    ready.set()
    last_id = "0-0"
    count = nbytes = 0
    first = last = 0.0
    done = False
    while not done:
        reply = client.xread({key: last_id}, count=16, block=30_000)
        if not reply:
            break
        now = time.perf_counter()
        for entry_id, fields in reply[0][1]:
            last_id = entry_id
            data = fields[b"d"]
            if data == END:
                done = True
                break
            if count == 0:
                first = now
            else:
                nbytes += len(data)
            count += 1
            last = now
    out.put(_result(nbytes, max(count - 1, 0), first, last))


def redis_case(frame_bytes: int, seconds: float) -> dict[str, Any]:
    import redis

    key = f"photonstream-bench-{_free_port()}"
    client = redis.Redis(REDIS_HOST, REDIS_PORT)
    client.delete(key)
    ready, out = _ctx.Event(), _ctx.Queue()
    try:
        return _run_processes([(_redis_consumer, (key, ready, out)),
                               (_redis_producer, (key, frame_bytes, seconds, ready))], out, 1)[0]  # fmt: skip
    finally:
        client.delete(key)


def disk_write(total_bytes: int = 1 << 30, block: int = 4 * MB) -> dict[str, Any]:
    """Sequential writes through the page cache into a temporary file: what durable mode pays per byte."""
    import os

    data = bytes(block)
    with tempfile.TemporaryDirectory(prefix="photonstream-bench-") as directory:
        path = Path(directory) / "probe"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            began = time.perf_counter()
            written = 0
            while written < total_bytes:
                written += os.write(fd, data)
            seconds = time.perf_counter() - began
        finally:
            os.close(fd)
    return _result(written, written // block, 0.0, seconds)


# -- the whole run ---------------------------------------------------------------------------------------------
SATURATED_BELOW = 0.95  # a paced case that delivers less than this share of its asked rate is saturated
RATIOS = {  # name: (numerator, denominator), both cases of the same round
    "mem_vs_proxy": ("buffer_mem", "zmq_proxy"),
    "mem_vs_raw": ("buffer_mem", "raw_zmq"),
    "disk_vs_mem": ("buffer_disk", "buffer_mem"),
    "disk_vs_file_write": ("buffer_disk", "disk_write"),
    "auth_vs_plain": ("buffer_auth", "buffer_plain"),
    "curve_vs_plain": ("buffer_curve", "buffer_plain"),
    "bcast4_vs_pub4": ("buffer_bcast4", "zmq_pub4"),
    "vs_nats": ("buffer_1mb", "nats"),
    "vs_redis": ("buffer_1mb", "redis"),
}


DURABLE_HZ = 200.0  # the durable latency cases' pace (1 MB messages)
SEGMENT = 16 << 20  # segment size of the retention case: a segment deleted every ~0.1 s
SWEEP_BYTES = (1024, 16 * 1024, 256 * 1024, 4 * 1024 * 1024)


def _size_text(size: int) -> str:
    return f"{size // (1 << 20)} MiB" if size >= 1 << 20 else f"{size // 1024} KiB"


def _messages_per_s(result: dict[str, Any]) -> float | None:
    messages, seconds = result.get("messages"), result.get("seconds")
    return messages / seconds if isinstance(messages, int) and seconds else None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def paced_verdict(result: dict[str, Any]) -> dict[str, Any]:
    """A paced case's latency, or "saturated at N/s" when the machine did not reach the asked rate (its
    latencies then measure queueing, not the hop)."""
    asked = result.get("rate_hz") or 0.0
    achieved = result["messages"] / result["seconds"] if result.get("seconds") else 0.0
    verdict = {"asked_hz": asked, "achieved_hz": round(achieved, 1)}
    if asked and achieved < SATURATED_BELOW * asked:
        return {**verdict, "saturated": f"saturated at {achieved:,.0f}/s", "p50_ms": None, "p99_ms": None}
    return {**verdict, "saturated": None, "p50_ms": result.get("p50_ms"), "p99_ms": result.get("p99_ms")}


def run(
    frame_mb: float = 4.0,
    seconds: float = 3.0,
    rounds: int = 3,
    only: tuple[str, ...] = (),
    rate_hz: float = 1000.0,
    peers: dict[str, str] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    size = int(frame_mb * MB)
    one_mb = MB
    cases: list[tuple[str, str, Callable[[], dict[str, Any]]]] = [
        ("raw_zmq", f"PUSH→PULL, {frame_mb:g} MB", lambda: raw_zmq(size, seconds)),
        ("zmq_proxy", f"PUSH→zmq.proxy→PULL, {frame_mb:g} MB", lambda: zmq_proxy(size, seconds)),
        ("buffer_mem", f"buffer in memory, {frame_mb:g} MB", lambda: buffer_case(size, seconds)),
        ("buffer_disk", f"buffer durable, {frame_mb:g} MB", lambda: buffer_case(size, seconds, durable=True)),
        ("disk_write", f"plain file writes, {frame_mb:g} MB blocks", lambda: disk_write(block=size)),
        ("buffer_plain", f"buffer, no authentication, {frame_mb:g} MB", lambda: buffer_case(size, seconds)),
        ("buffer_auth", f"buffer, token auth (plaintext), {frame_mb:g} MB",
         lambda: buffer_case(size, seconds, security="token")),
        ("buffer_curve", f"buffer, CURVE (encrypted), {frame_mb:g} MB",
         lambda: buffer_case(size, seconds, security="curve")),
        ("buffer_bcast4", f"buffer → 4 groups, {frame_mb:g} MB (per consumer)",
         lambda: buffer_case(size, seconds, groups=4)),
        ("zmq_pub4", f"PUB → 4 SUB, {frame_mb:g} MB (per consumer)", lambda: zmq_pub(size, seconds)),
        ("nats", "NATS JetStream, 1 MB", lambda: nats_case(one_mb, seconds)),
        ("redis", "Redis Streams, 1 MB", lambda: redis_case(one_mb, seconds)),
        ("buffer_1mb", "buffer in memory, 1 MB", lambda: buffer_case(one_mb, seconds)),
        ("latency", f"buffer, 1 MB paced at {rate_hz:g} Hz", lambda: buffer_case(one_mb, seconds, rate_hz=rate_hz)),
        ("durable_latency", f"buffer durable, 1 MB paced at {DURABLE_HZ:g} Hz",
         lambda: buffer_case(one_mb, seconds, durable=True, rate_hz=DURABLE_HZ)),
        ("durable_latency_deleting", f"the same, retention deleting {_size_text(SEGMENT)} segments",
         lambda: buffer_case(one_mb, seconds, durable=True, rate_hz=DURABLE_HZ, retention_bytes=4 * SEGMENT,
                             segment_bytes=SEGMENT)),
    ]  # fmt: skip
    for size in SWEEP_BYTES:  # messages/s of the buffer against raw PUSH -> PULL, same sizes, same Python ends
        cases.append((f"raw_{size}", f"PUSH→PULL, {_size_text(size)}", lambda size=size: raw_zmq(size, seconds)))
        cases.append((f"buffer_{size}", f"buffer in memory, {_size_text(size)}",
                      lambda size=size: buffer_case(size, seconds)))  # fmt: skip
    if peers:
        from benchmarks._buffer_peers import peer_cases

        cases += peer_cases(peers, seconds)
    if only:
        cases = [case for case in cases if case[0] in only]
    load_before = load_average()
    results: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in cases}
    for _ in range(rounds):  # interleaved: every case once per round
        for key, _, call in cases:
            results[key].append(_attempt(key, call))
    samples = {key: [r.get("gbps") for r in runs] for key, runs in results.items()}
    summary: dict[str, Any] = {"frame_mb": frame_mb, "seconds": seconds, "rounds": rounds}
    rows: list[dict[str, Any]] = []
    nan = float("nan")
    for key, label, _ in cases:
        gbps = median(samples[key])
        errors = sorted({r["error"] for r in results[key] if "error" in r})
        row = {"case": label, "GB/s (median)": nan if gbps is None else gbps}
        known = [v for v in samples[key] if v is not None]
        row |= {"min": min(known) if known else nan, "max": max(known) if known else nan}
        if key == "latency":
            verdicts = [paced_verdict(r) for r in results[key] if "error" not in r]
            achieved = median([v["achieved_hz"] for v in verdicts])
            saturated = [f"saturated at {achieved:,.0f}/s" for v in verdicts if v["saturated"]]
            summary["latency"] = {
                "asked_hz": rate_hz,
                "achieved_hz": achieved,
                "saturated": saturated[0] if saturated else None,
                "p50_ms": None if saturated else median([v["p50_ms"] for v in verdicts]),
                "p99_ms": None if saturated else median([v["p99_ms"] for v in verdicts]),
            }
            row["note"] = saturated[0] if saturated else (
                f"p50 {summary['latency']['p50_ms']:.2f} ms, p99 {summary['latency']['p99_ms']:.2f} ms"
                if verdicts else "; ".join(errors))  # fmt: skip
        else:
            summary[f"{key}_gbps"] = None if gbps is None else round(gbps, 3)
            row["note"] = "; ".join(errors)
        rows.append(row)
    from benchmarks._buffer_peers import PEER_RATIOS

    pairs = {**RATIOS, **PEER_RATIOS}
    summary["ratios"] = {name: ratio(samples, a, b) for name, (a, b) in pairs.items() if a in samples and b in samples}
    rates = {key: [_messages_per_s(r) for r in runs] for key, runs in results.items()}
    summary["size_sweep"] = {
        str(size): {
            "buffer_msgs_per_s": _rounded(median(rates[f"buffer_{size}"])),
            "raw_msgs_per_s": _rounded(median(rates[f"raw_{size}"])),
            "ratio": ratio(rates, f"buffer_{size}", f"raw_{size}"),
        }
        for size in SWEEP_BYTES
        if f"buffer_{size}" in rates and f"raw_{size}" in rates
    }
    p99 = {key: [r.get("p99_ms") for r in runs] for key, runs in results.items() if key.startswith("durable_latency")}
    if len(p99) == 2:
        summary["durable_p99_ms"] = {key: _rounded(median(v)) for key, v in p99.items()}
        summary["ratios"]["durable_p99_deleting_vs_not"] = ratio(p99, "durable_latency_deleting", "durable_latency")
    for row, (key, _, _) in zip(rows, cases, strict=True):
        if key.startswith("durable_latency") and p99.get(key):
            row["note"] = f"p99 {median(p99[key]) or nan:.2f} ms" + (f"; {row['note']}" if row["note"] else "")
        row["msgs/s (median)"] = median(rates[key]) or nan
    summary["load_average"] = {"before": load_before, "after": load_average()}
    summary["machine"] = machine()
    return rows, summary


def _attempt(name: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return call()
    except Exception as exc:  # a missing NATS or Redis must not hide the other figures
        return {"gbps": None, "error": f"{name}: {type(exc).__name__}: {exc}"}


def main(
    frame_mb: float = 4.0,
    seconds: float = 3.0,
    json_only: bool = False,
    rounds: int = 3,
    rate_hz: float = 1000.0,
    peers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run every case, print the table (unless ``json_only``) and the JSON line; return the JSON object."""
    rows, summary = run(frame_mb, seconds, rounds, rate_hz=rate_hz, peers=peers)
    load = summary["load_average"]
    title = (f"buffer ({frame_mb:g} MB frames, {seconds:g} s per case, {rounds} interleaved rounds, medians; "
             f"load {load['before']} → {load['after']})")  # fmt: skip
    report(title, rows, summary, json_only)
    return summary


def cli(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="photonstream bench buffer", description=__doc__.splitlines()[0])
    parser.add_argument("--frame-mb", type=float, default=4.0, help="payload size of the main cases (MB)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long each case sends")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians of per-round ratios)")
    parser.add_argument("--rate-hz", type=float, default=1000.0, help="the paced latency case's rate")
    parser.add_argument("--peer", action="append", default=[], metavar="NAME=PATH", help="fastcache=BUILD_DIR")
    parser.add_argument("--json", action="store_true", help="only the JSON line")
    args = parser.parse_args(argv)
    peers = dict(p.split("=", 1) for p in args.peer if "=" in p)
    return main(args.frame_mb, args.seconds, args.json, args.rounds, args.rate_hz, peers)


if __name__ == "__main__":
    cli()
