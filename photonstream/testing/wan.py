"""A simulated wide-area link: an asyncio TCP relay with one-way delay, a bandwidth cap and a cut/heal switch.

``tc netem`` is not available everywhere we test, so the link's character lives in this relay instead. Every
TCP connection accepted on ``listen`` gets a connection to ``target``; bytes in each direction are

1. timestamped as they arrive,
2. held until ``arrival + delay`` (the propagation delay; independent of how much is queued), then
3. shaped by a token bucket shared by every connection in that direction (the link's capacity), and written.

Delay and shaping are separate stages, so a large transfer is delayed once (not once per chunk) and paced at
the cap, as on a real long link. The relay reads at most ``queue_bytes`` ahead per connection and direction,
so a slow receiver pushes back on the sender through TCP, as a real bottleneck does.

``cut("reset")`` resets every connection (RST) and refuses new ones until ``heal()``; ``cut("blackhole")``
keeps connections open but forwards nothing (TCP on both sides simply waits, as during a routing outage) and
forwards what was held once healed. Counters: bytes forwarded per direction, connections accepted and reset.

In a test::

    with RelayThread(WanConfig(target=("127.0.0.1", 5600), delay_ms=25, rate_mbps=400)) as relay:
        endpoint = f"tcp://127.0.0.1:{relay.port}"
        relay.cut(); relay.heal()

From a shell (e.g. inside a network namespace)::

    python -m photonstream.testing.wan --listen 169.254.77.2:5601 --target 169.254.77.1:5600 \\
        --delay-ms 25 --rate-mbps 400 [--also 127.0.0.1:8444=169.254.77.1:8443]

``--also`` adds more ports on the same link: each forwards to its own target with the same delay, and all share
the cap (one token bucket per direction), as several services behind one wide-area link do. The counters printed
at the end are the first route's, with the others' under ``also``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

CutMode = Literal["reset", "blackhole"]
CHUNK_BYTES = 64 * 1024
SHAPE_BYTES = 32 * 1024  # the largest piece the shaper releases at once (smooths the pacing)
UP, DOWN = "up", "down"  # client → target, target → client


@dataclass(frozen=True)
class WanConfig:
    """The link: where to listen, where to forward, and its delay (ms, one way, per direction) and cap."""

    target: tuple[str, int]
    listen: tuple[str, int] = ("127.0.0.1", 0)
    delay_ms: float = 25.0  # client → target
    delay_back_ms: float | None = None  # target → client (None: same as delay_ms)
    rate_mbps: float | None = None  # megabits per second per direction (None: no cap)
    burst_bytes: int = 128 * 1024  # how far the token bucket may run ahead of the rate
    queue_bytes: int | None = None  # bytes held per connection and direction (None: 2 × bandwidth-delay, >= 4 MiB)

    def delay_s(self, direction: str) -> float:
        ms = self.delay_ms if direction == UP or self.delay_back_ms is None else self.delay_back_ms
        return max(0.0, ms) / 1000.0

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_mbps is None else self.rate_mbps * 1e6 / 8

    def queue_limit(self) -> int:
        if self.queue_bytes is not None:
            return self.queue_bytes
        rate = self.rate_bytes_per_s or 0.0
        longest = max(self.delay_s(UP), self.delay_s(DOWN))
        return max(4 << 20, int(2 * rate * longest))


@dataclass
class Counters:
    """What the relay has done so far (read any time; updated by the relay's loop)."""

    bytes_up: int = 0
    bytes_down: int = 0
    accepted: int = 0
    reset: int = 0
    refused: int = 0
    active: int = 0
    first_down_at: float | None = None  # time.time() of the first byte written towards a client
    last_down_at: float | None = None  # ... and of the latest (wall clock: comparable across processes)

    def as_dict(self) -> dict[str, float | int | None]:
        return dict(self.__dict__)


class TokenBucket:
    """Bytes per second with a burst allowance; waiters are served in arrival order (a fair shared link)."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(max(burst, SHAPE_BYTES))
        self._tokens = self.burst
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= n:
                    self._tokens -= n
                    return
                await asyncio.sleep((n - self._tokens) / self.rate)


@dataclass(eq=False)
class _Pump:
    """One direction of one connection: reader → (delay) → (shape) → writer."""

    direction: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    held: deque[tuple[float, bytes]] = field(default_factory=deque)  # (release time, data)
    held_bytes: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    eof: bool = False


class WanRelay:
    """The relay on the running asyncio loop: ``await start()``, ``cut()``/``heal()``, ``await stop()``."""

    def __init__(self, config: WanConfig, share_link_of: WanRelay | None = None) -> None:
        """``share_link_of``: another relay whose link (cap) this one shares: one more port on the same wire."""
        self.config = config
        self.counters = Counters()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._cut: CutMode | None = None
        self._healed = asyncio.Event()
        self._healed.set()
        rate = config.rate_bytes_per_s
        self._buckets = {d: TokenBucket(rate, config.burst_bytes) if rate else None for d in (UP, DOWN)}
        if share_link_of is not None:
            self._buckets = share_link_of._buckets

    @property
    def is_cut(self) -> bool:
        return self._cut is not None

    async def start(self) -> int:
        host, port = self.config.listen
        self._server = await asyncio.start_server(self._accept, host, port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.abort(reset=False)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def cut(self, mode: CutMode = "reset") -> None:
        """Take the link down: ``reset`` every connection now, or ``blackhole`` (hold everything)."""
        if mode not in ("reset", "blackhole"):
            raise ValueError(f"cut mode must be 'reset' or 'blackhole', not {mode!r}")
        self._cut = mode
        self._healed.clear()
        if mode == "reset":
            for connection in list(self._connections):
                connection.abort(reset=True)
                self.counters.reset += 1

    def heal(self) -> None:
        self._cut = None
        self._healed.set()

    # -- connections --------------------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut == "reset":
            self.counters.refused += 1
            _reset(writer)
            return
        self.counters.accepted += 1
        await self._healed.wait()  # a black-holed link: the handshake towards the target waits for the heal
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.config.target)
        except OSError:
            self.counters.refused += 1
            _reset(writer)
            return
        for w in (writer, up_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = _Connection(self, (reader, writer), (up_reader, up_writer))
        self._connections.add(connection)
        self.counters.active = len(self._connections)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self.counters.active = len(self._connections)


class _Connection:
    def __init__(
        self,
        relay: WanRelay,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.relay = relay
        self.client_writer = client[1]
        self.target_writer = target[1]
        self.pumps = [_Pump(UP, client[0], target[1]), _Pump(DOWN, target[0], client[1])]
        self.tasks: list[asyncio.Task[None]] = []

    async def run(self) -> None:
        for pump in self.pumps:
            self.tasks.append(asyncio.create_task(self._read(pump)))
            self.tasks.append(asyncio.create_task(self._write(pump)))
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.abort(reset=False)

    def abort(self, reset: bool) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in (self.client_writer, self.target_writer):
            if reset:
                _reset(writer)
            else:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _read(self, pump: _Pump) -> None:
        limit = self.relay.config.queue_limit()
        delay = self.relay.config.delay_s(pump.direction)
        try:
            while True:
                while pump.held_bytes >= limit:
                    pump.drained.clear()
                    await pump.drained.wait()
                data = await pump.reader.read(CHUNK_BYTES)
                if not data:
                    break
                pump.held.append((time.monotonic() + delay, data))
                pump.held_bytes += len(data)
                pump.arrived.set()
        except (ConnectionError, OSError):
            pass
        finally:
            pump.eof = True
            pump.arrived.set()

    async def _write(self, pump: _Pump) -> None:
        relay = self.relay
        bucket = relay._buckets[pump.direction]
        counters = relay.counters
        try:
            while True:
                if not pump.held:
                    if pump.eof:
                        break
                    pump.arrived.clear()
                    await pump.arrived.wait()
                    continue
                release_at, data = pump.held[0]
                wait = release_at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await relay._healed.wait()
                piece = data[:SHAPE_BYTES] if bucket is not None else data
                if bucket is not None:
                    await bucket.take(len(piece))
                await relay._healed.wait()
                pump.writer.write(piece)
                if pump.direction == UP:
                    counters.bytes_up += len(piece)
                else:
                    counters.bytes_down += len(piece)
                    counters.last_down_at = time.time()
                    if counters.first_down_at is None:
                        counters.first_down_at = counters.last_down_at
                if len(piece) < len(data):
                    pump.held[0] = (release_at, data[len(piece) :])
                else:
                    pump.held.popleft()
                pump.held_bytes -= len(piece)
                pump.drained.set()
                await pump.writer.drain()
            with contextlib.suppress(OSError, RuntimeError):
                if pump.writer.can_write_eof():
                    pump.writer.write_eof()
        except (ConnectionError, OSError):
            for other in self.pumps:  # one side is gone: the whole connection goes
                other.eof = True
            self.abort(reset=False)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), so the peer sees the connection reset, not a clean end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport = writer.transport
    with contextlib.suppress(Exception):
        transport.abort()


class RelayThread:
    """The relay on a loop of its own in a background thread, for tests and tools in a synchronous program.

    ``cut``/``heal``/``counters`` may be called from any thread.
    """

    def __init__(self, config: WanConfig) -> None:
        self.config = config
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="photonstream-wan", daemon=True)
        self.relay: WanRelay | None = None
        self.port = 0

    def start(self) -> RelayThread:
        self._thread.start()
        self.relay = self._call(self._make())
        self.port = self.relay.port
        return self

    async def _make(self) -> WanRelay:
        relay = WanRelay(self.config)
        await relay.start()
        return relay

    def _call(self, coroutine: object) -> object:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    def _run(self, fn: object, *args: object) -> None:
        async def call() -> None:
            fn(*args)  # type: ignore[operator]

        self._call(call())

    @property
    def counters(self) -> Counters:
        assert self.relay is not None
        return self.relay.counters

    def cut(self, mode: CutMode = "reset") -> None:
        assert self.relay is not None
        self._run(self.relay.cut, mode)

    def heal(self) -> None:
        assert self.relay is not None
        self._run(self.relay.heal)

    def stop(self) -> None:
        if self.relay is not None:
            with contextlib.suppress(Exception):
                self._call(self.relay.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- command line -----------------------------------------------------------------------------------------
def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def _serve(config: WanConfig, also: list[tuple[tuple[str, int], tuple[str, int]]]) -> None:
    relay = WanRelay(config)
    port = await relay.start()
    others = [WanRelay(replace(config, listen=listen, target=target), share_link_of=relay) for listen, target in also]
    routes = [{"listening": [config.listen[0], port], "target": list(config.target)}]
    for other in others:
        routes.append({"listening": [other.config.listen[0], await other.start()], "target": list(other.config.target)})
    print(json.dumps({**routes[0], "also": routes[1:]}), flush=True)
    every = [relay, *others]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # SIGUSR1 cuts (reset), SIGUSR2 heals: a test can switch a relay in another namespace without a socket
    loop.add_signal_handler(signal.SIGUSR1, lambda: [r.cut("reset") for r in every])
    loop.add_signal_handler(signal.SIGUSR2, lambda: [r.heal() for r in every])
    await stop.wait()
    for each in every:
        await each.stop()
    print(json.dumps({**relay.counters.as_dict(), "also": [o.counters.as_dict() for o in others]}), flush=True)


def _route(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    listen, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not LISTEN_HOST:PORT=TARGET_HOST:PORT")
    return _address(listen), _address(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m photonstream.testing.wan",
        description="TCP relay with delay and a bandwidth cap (a simulated WAN link). "
        "SIGUSR1 cuts the link (reset), SIGUSR2 heals it; the final counters are printed as JSON.",
    )
    parser.add_argument("--listen", type=_address, default=("127.0.0.1", 0), help="HOST:PORT to accept on")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay client → target (ms)")
    parser.add_argument("--delay-back-ms", type=float, default=None, help="one-way delay back (default: same)")
    parser.add_argument("--rate-mbps", type=float, default=None, help="cap per direction (megabits/s)")
    parser.add_argument(
        "--also", type=_route, action="append", default=[], metavar="LISTEN=TARGET",
        help="one more port on the same link (same delay, sharing the cap), e.g. 127.0.0.1:8444=10.0.0.1:8443",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or (args.rate_mbps is not None and args.rate_mbps <= 0):
        parser.error("--delay-ms must be >= 0 and --rate-mbps > 0")
    config = WanConfig(
        target=args.target,
        listen=args.listen,
        delay_ms=args.delay_ms,
        delay_back_ms=args.delay_back_ms,
        rate_mbps=args.rate_mbps,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(config, args.also))
    return 0


if __name__ == "__main__":
    sys.exit(main())
