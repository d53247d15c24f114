"""The simulated WAN relay on loopback: delay both ways, the bandwidth cap, cut (reset, black hole) and heal."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from photonstream.testing.wan import RelayThread, WanConfig

REPO = Path(__file__).resolve().parents[2]


class EchoServer:
    """Echoes every byte back (a thread per connection); or, with ``sink=True``, counts and discards them."""

    def __init__(self, sink: bool = False) -> None:
        self.sink = sink
        self.received = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(1 << 16)
                except OSError:
                    return
                if not data:
                    return
                self.received += len(data)
                if not self.sink:
                    conn.sendall(data)

    def close(self) -> None:
        self._stop = True
        self._listener.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def round_trip(sock: socket.socket, payload: bytes = b"x") -> float:
    began = time.perf_counter()
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(1 << 16)
        assert chunk, "the relay closed the connection"
        got += chunk
    assert got == payload
    return time.perf_counter() - began


def test_a_round_trip_takes_at_least_both_delays(echo: EchoServer) -> None:
    config = WanConfig(target=("127.0.0.1", echo.port), delay_ms=20, delay_back_ms=30)
    with RelayThread(config) as relay, connect(relay.port) as sock:
        times = [round_trip(sock, bytes([i]) * 100) for i in range(5)]
    assert min(times) >= 0.050  # 20 ms out + 30 ms back, whatever the machine's speed


def test_a_large_transfer_is_delayed_once_and_arrives_intact(echo: EchoServer) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB
    config = WanConfig(target=("127.0.0.1", echo.port), delay_ms=25)
    with RelayThread(config) as relay, connect(relay.port) as sock:
        sock.settimeout(10)
        elapsed = round_trip(sock, payload)
        counters = relay.counters.as_dict()
    assert elapsed >= 0.050
    assert counters["bytes_up"] == counters["bytes_down"] == len(payload)


def test_goodput_never_exceeds_the_cap() -> None:
    sink = EchoServer(sink=True)
    rate_mbps = 80.0  # 10 MB/s: 6 MB take at least 0.6 s
    payload = b"\x5a" * (6 << 20)
    config = WanConfig(target=("127.0.0.1", sink.port), delay_ms=5, rate_mbps=rate_mbps)
    try:
        with RelayThread(config) as relay, connect(relay.port) as sock:
            began = time.perf_counter()
            sock.sendall(payload)
            deadline = time.monotonic() + 30
            while sink.received < len(payload) and time.monotonic() < deadline:
                time.sleep(0.002)
            elapsed = time.perf_counter() - began
    finally:
        sink.close()
    assert sink.received == len(payload)
    goodput_mbps = len(payload) * 8 / elapsed / 1e6
    # the bucket may run ahead by its burst (128 KiB of 6 MiB: 2 %); never more
    assert goodput_mbps <= rate_mbps * 1.03, f"{goodput_mbps:.1f} Mb/s through a {rate_mbps} Mb/s link"


def test_a_reset_cut_breaks_connections_refuses_new_ones_and_heals(echo: EchoServer) -> None:
    config = WanConfig(target=("127.0.0.1", echo.port), delay_ms=1)
    with RelayThread(config) as relay:
        sock = connect(relay.port)
        round_trip(sock)
        relay.cut("reset")
        with pytest.raises(OSError):  # reset by the relay: the next read or write fails
            sock.sendall(b"y")
            if not sock.recv(1):
                raise ConnectionResetError("closed")
        sock.close()
        with pytest.raises(OSError), connect(relay.port) as during:  # the relay resets it at once
            during.sendall(b"z")
            if not during.recv(1):
                raise ConnectionResetError("closed")
        relay.heal()
        with connect(relay.port) as after:
            round_trip(after, b"healed")
        counters = relay.counters.as_dict()
    assert counters["reset"] == 1 and counters["refused"] == 1


def test_a_black_hole_holds_traffic_until_the_heal(echo: EchoServer) -> None:
    config = WanConfig(target=("127.0.0.1", echo.port), delay_ms=1)
    with RelayThread(config) as relay, connect(relay.port) as sock:
        round_trip(sock)
        relay.cut("blackhole")
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(16)
        relay.heal()
        sock.settimeout(5)
        got = b""
        while len(got) < 4:
            got += sock.recv(16)
    assert got == b"held"


def test_the_command_line_relay_forwards_cuts_on_sigusr1_and_reports_counters(echo: EchoServer) -> None:
    relay = subprocess.Popen(
        [sys.executable, "-m", "photonstream.testing.wan", "--target", f"127.0.0.1:{echo.port}",
         "--delay-ms", "10", "--rate-mbps", "100"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert relay.stdout is not None
        port = json.loads(relay.stdout.readline())["listening"][1]
        with connect(port) as sock:
            assert round_trip(sock, b"ping") >= 0.020
            relay.send_signal(signal.SIGUSR1)
            sock.settimeout(5)
            with pytest.raises(OSError):
                sock.sendall(b"y")
                if not sock.recv(1):
                    raise ConnectionResetError("closed")
        relay.send_signal(signal.SIGUSR2)
        with connect(port) as sock:
            round_trip(sock, b"again")
        relay.send_signal(signal.SIGTERM)
        counters = json.loads(relay.stdout.readline())
        assert relay.wait(10) == 0
    finally:
        relay.kill()
    assert counters["bytes_down"] == len(b"ping") + len(b"again")
    assert counters["reset"] == 1


def test_more_ports_on_the_same_link_forward_to_their_own_targets_and_are_cut_together(echo: EchoServer) -> None:
    other = EchoServer()
    relay = subprocess.Popen(
        [sys.executable, "-m", "photonstream.testing.wan", "--target", f"127.0.0.1:{echo.port}",
         "--also", f"127.0.0.1:0=127.0.0.1:{other.port}", "--delay-ms", "10", "--rate-mbps", "100"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert relay.stdout is not None
        listening = json.loads(relay.stdout.readline())
        [also] = listening["also"]
        assert also["target"] == ["127.0.0.1", other.port]
        with connect(listening["listening"][1]) as first, connect(also["listening"][1]) as second:
            assert round_trip(first, b"one") >= 0.020
            assert round_trip(second, b"second") >= 0.020  # the same delay on the other route
            relay.send_signal(signal.SIGUSR1)  # the link is cut: both routes' connections go
            for sock in (first, second):
                sock.settimeout(5)
                with pytest.raises(OSError):
                    sock.sendall(b"y")
                    if not sock.recv(1):
                        raise ConnectionResetError("closed")
        relay.send_signal(signal.SIGTERM)
        counters = json.loads(relay.stdout.readline())
        assert relay.wait(10) == 0
    finally:
        relay.kill()
        other.close()
    assert (echo.received, other.received) == (len(b"one"), len(b"second"))  # each route reached its own target
    assert (counters["bytes_down"], counters["also"][0]["bytes_down"]) == (len(b"one"), len(b"second"))
    assert counters["reset"] == counters["also"][0]["reset"] == 1
