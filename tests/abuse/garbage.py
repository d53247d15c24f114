"""Garbage to throw at sockets: a seeded catalogue of broken buffer-protocol messages and hostile headers, and
raw (non-ZeroMQ) TCP junk."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import zmq

from photonstream.buffer import protocol as P

HOSTILE_VALUES: list[Any] = [
    float("inf"), float("-inf"), float("nan"), 2**64 - 1, -(2**63), 10**30 / 7, "x", "", [], [float("inf"), 1],
    {"a": 1}, None, True, b"\xff\xfe", "a/1/b" * 40,
]  # fmt: skip
HEADER_KEYS = {
    P.PUB: ["s", "k", "n", "q", "p", "d", "z"],
    P.SUB: ["s", "g", "pol", "st", "c", "m", "i", "e", "a"],
    P.CRED: ["c", "a", "e"],
    P.RES: ["s", "t", "g", "w", "f", "n"],
    P.RESULTS: ["after", "limit"],
    P.ACL: ["op"],
    P.HB: ["x"],
    P.BYE: ["x"],
    P.STATS: ["x"],
}
VALID = {
    P.PUB: {"s": "evil/1/pub", "k": "event", "n": 1, "q": 1, "p": "evil"},
    P.SUB: {"s": "evil/1/sub", "g": "g", "pol": "lossless", "st": "beginning", "c": 4, "m": "evil"},
    P.CRED: {"c": 1, "a": [0]},
    P.RES: {"s": "evil/1/res", "t": "hit_rate", "g": "g", "w": "w", "f": [0, 1], "n": 1},
    P.RESULTS: {"after": 0, "limit": 10},
    P.ACL: {"op": "register"},
    P.HB: {},
    P.BYE: {},
    P.STATS: {},
}


def refused_catalogue(seed: int = 9) -> list[tuple[str, list[bytes]]]:
    """Messages the buffer must answer with ERR, each with a name saying what is wrong with it."""
    rng = random.Random(seed)
    found: list[tuple[str, list[bytes]]] = []
    for i in range(40):
        parts = [rng.randbytes(rng.randint(0, 200)) for _ in range(rng.randint(1, 3))]
        if not parts[0].startswith(P.PROTOCOL):
            found.append((f"random bytes #{i}", parts))
    for tag in (b"PSB0", b"PSB2", b"psb1", b"PSB", b"\x00PSB1"):
        found.append((f"protocol tag {tag!r}", [tag + P.SUB + msgpack.packb(VALID[P.SUB])]))
    found.append(("unknown command Z", [P.envelope(b"Z", {"s": "evil/1/z"})]))
    found.append(("unknown command 0xff", [P.PROTOCOL + b"\xff\x80"]))
    whole = P.envelope(P.PUB, VALID[P.PUB])
    for cut in (4, 5, 6, len(whole) // 2, len(whole) - 1):
        found.append((f"envelope cut at {cut} of {len(whole)}", [whole[:cut], b"payload"]))
    found.append(("PUB without its payload frame", [P.envelope(P.PUB, VALID[P.PUB])]))
    found.append(("start without its payload frame", [P.envelope(P.PUB, {**VALID[P.PUB], "k": "start"})]))
    found.append(("data for a stream that never started", [P.envelope(P.PUB, VALID[P.PUB]), b"\x80"]))
    found.append(("huge frame of random bytes", [rng.randbytes(4 << 20)]))
    found.append(("huge envelope header", [P.PROTOCOL + P.SUB + b"\xc4" + rng.randbytes(100_000)]))
    found.append(("header that is a list", [P.PROTOCOL + P.SUB + msgpack.packb([1, 2, 3])]))
    found.append(("header nested 5000 deep", [P.PROTOCOL + P.SUB + b"\x91" * 5000 + b"\xc0"]))
    found.append(("header of invalid msgpack", [P.PROTOCOL + P.SUB + b"\xc1\xc1"]))
    return found


def hostile_headers() -> Iterator[tuple[str, list[bytes]]]:
    """Every header field of every command set, one at a time, to each hostile value; some of these are valid
    requests (a SUB with a huge credit is capped), so only the service's survival is owed, not an ERR."""
    for command, keys in HEADER_KEYS.items():
        for key in keys:
            for value in HOSTILE_VALUES:
                header = {**VALID[command], key: value}
                extra = [msgpack.packb({"frames": 1})] if command in (P.RES, P.PUB) else []
                if command == P.ACL:
                    extra = [msgpack.packb([{"addresses": value}])]
                yield f"{command!r} {key}={value!r}"[:80], [P.envelope(command, header), *extra]


class Attacker:
    """A DEALER that sends garbage and counts what the buffer answers, by command."""

    def __init__(self, endpoint: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self.sent = 0

    def send(self, parts: list[bytes]) -> None:
        self.socket.send_multipart(parts)
        self.sent += 1

    def replies(self, expected: int, timeout_s: float = 10.0) -> dict[bytes, int]:
        """Commands of the replies received until ``expected`` came or nothing more came for a while."""
        counts: dict[bytes, int] = {}
        deadline = time.monotonic() + timeout_s
        while sum(counts.values()) < expected and (left := deadline - time.monotonic()) > 0:
            if not self.socket.poll(max(1, int(min(left, 0.2) * 1000))):
                continue
            command, _ = P.open_envelope(self.socket.recv_multipart()[0])
            counts[command] = counts.get(command, 0) + 1
        return counts

    def close(self) -> None:
        self.socket.close()


def raw_tcp_junk(endpoint: str, seed: int = 3) -> int:
    """Connect to a ZeroMQ TCP endpoint without speaking ZMTP: random bytes, a greeting with a bad mechanism, a
    truncated greeting left open; returns how many connections were made."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    rng = random.Random(seed)
    greeting = b"\xff" + bytes(8) + b"\x7f" + b"\x03\x00" + b"EVIL".ljust(20, b"\x00") + b"\x00" + bytes(31)
    payloads = [rng.randbytes(512), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", greeting + rng.randbytes(64), greeting[:7]]
    for payload in payloads:
        with socket.create_connection((host, int(port)), timeout=2) as conn:
            conn.sendall(payload)
            time.sleep(0.05)
    return len(payloads)
