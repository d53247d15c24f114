"""``bench buffer``'s ZeroMQ baselines (PUSH → PULL, libzmq's proxy, PUB → SUB) and the helpers every case
shares: the constants, free ports, spawned processes and their results."""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from collections.abc import Callable
from typing import Any

import zmq

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
