"""``bench buffer``'s other hops: the photonstream buffer (producer, service and consumer processes, with its
security modes), NATS JetStream, Redis Streams and plain file writes."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

from benchmarks._buffer_zmq import (
    CREDIT,
    END,
    MB,
    MEMORY,
    NATS_URL,
    REDIS_HOST,
    REDIS_PORT,
    STREAM,
    WINDOW,
    _ctx,
    _free_port,
    _per_consumer,
    _result,
    _run_processes,
)


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
