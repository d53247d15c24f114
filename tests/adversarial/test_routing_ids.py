"""Announced routing ids (issue 13, defect 1): no peer chooses, predicts or learns another connection's routing id.

On ebfe5d1 the buffer's listeners took ids that peers announced, generated the others from glibc's unseeded
``rand()`` (``00 6b8b4567`` for the first ROUTER of a process, ``00 e43c9869`` for the second, ...) and showed each
member's id in STATS; libzmq 4.3.5 aborts the process when a generated id is one a peer announced. A peer that
announced the next ids killed the buffer with the next ordinary connection.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from photonstream.buffer import protocol as P
from photonstream.buffer.routing import is_generated, new_router
from photonstream.client import subscribe
from tests.buffer.support import ServiceProcess, events_of, free_port, produce, start_service, wait_until

pytestmark = pytest.mark.timeout(120)

FRAMES = 40


def glibc_default_ids(routers: int, per_router: int) -> list[bytes]:
    """The ids libzmq 4.3.5 generates when nothing seeded ``rand()``: the first ``per_router`` of each of the first
    ``routers`` ROUTER sockets of a process (``generate_random() = rand() | rand() << 31``, glibc's TYPE_3 rand)."""
    r = [0] * 344
    r[0] = 1
    for i in range(1, 31):
        r[i] = (16807 * r[i - 1]) % 2147483647
    for i in range(31, 34):
        r[i] = r[i - 31]
    for i in range(34, 344):
        r[i] = (r[i - 31] + r[i - 3]) & 0xFFFFFFFF
    outputs: list[int] = []
    i = 344
    while len(outputs) < 2 * routers:
        r.append((r[i - 31] + r[i - 3]) & 0xFFFFFFFF)
        outputs.append(r[i] >> 1)
        i += 1
    ids = []
    for k in range(routers):
        start = (outputs[2 * k] | (outputs[2 * k + 1] << 31)) & 0xFFFFFFFF
        ids += [b"\x00" + struct.pack(">I", (start + n) & 0xFFFFFFFF) for n in range(per_router)]
    return ids


def test_the_default_sequence_is_what_libzmq_generates_unseeded() -> None:
    """The attack's premise, checked against libzmq itself: a ROUTER made without our seeding starts where the
    model says (in a fresh process; this one may have seeded already, so the model is checked in a child)."""
    import subprocess
    import sys

    code = (
        "import zmq\nc = zmq.Context()\nr = c.socket(zmq.ROUTER)\np = r.bind_to_random_port('tcp://127.0.0.1')\n"
        "d = c.socket(zmq.DEALER)\nd.connect(f'tcp://127.0.0.1:{p}')\nd.send(b'x')\n"
        "print(r.recv_multipart()[0].hex())\n"
    )
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert bytes.fromhex(first.stdout.strip()) == glibc_default_ids(1, 1)[0] == bytes.fromhex("006b8b4567")


def test_generated_ids_are_not_predictable() -> None:
    """Two ROUTERs made by ``new_router`` in one process do not start at glibc's default sequence, nor together."""
    context = zmq.Context()
    firsts = []
    try:
        for _ in range(3):
            router = new_router(context)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            dealer = context.socket(zmq.DEALER)
            dealer.connect(f"tcp://127.0.0.1:{port}")
            dealer.send(b"x")
            assert router.poll(5000)
            firsts.append(router.recv_multipart()[0])
            dealer.close(0)
            router.close(0)
    finally:
        context.term()
    assert all(is_generated(first) for first in firsts)
    assert not set(firsts) & set(glibc_default_ids(8, 4))
    assert len(set(firsts)) == 3


def announcing(context: zmq.Context, endpoint: str, ids: list[bytes]) -> list[zmq.Socket]:
    sockets = []
    for routing_id in ids:
        sock = context.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, routing_id)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sockets.append(sock)
    return sockets


@pytest.fixture
def buffer_process(tmp_path: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess(tmp_path / "data", free_port())  # a fresh process: its ROUTER would be glibc's first
    try:
        yield process
    finally:
        process.stop()


def test_peers_announcing_the_next_ids_do_not_abort_the_buffer(buffer_process: ServiceProcess) -> None:
    context = zmq.Context()
    attackers = announcing(context, buffer_process.endpoint, glibc_default_ids(6, 8))
    try:
        for sock in attackers:  # each one completes its handshake (a message goes through it)
            sock.send(P.envelope(P.STATS))
        for sock in attackers:  # an answer: the id is in the ROUTER's table (ids of this shape pass for generated)
            assert sock.poll(5000), "an announcing peer got no answer"
            sock.recv_multipart()
        produce(buffer_process.endpoint, "exp/1/det", FRAMES)  # the ordinary connections that used to abort it
        received = list(subscribe(buffer_process.endpoint, "exp/1/det", group="g", timeout_s=20))
        assert buffer_process.proc.poll() is None, "the buffer process died"
        assert events_of(received) == list(range(FRAMES))
    finally:
        for sock in attackers:
            sock.close(0)
        context.term()


def test_an_announced_id_never_joins_a_group_or_receives_data() -> None:
    service = start_service()
    context = zmq.Context()
    try:
        produce(service.endpoint, "exp/1/det", 3)
        (thief,) = announcing(context, service.endpoint, [b"member-a"])
        thief.send(P.envelope(P.SUB, {"s": "exp/1/det", "g": "g", "pol": "lossless", "c": 8, "m": "a"}))
        assert thief.poll(5000)
        command, header = P.open_envelope(thief.recv_multipart()[0])
        assert (command, header["c"]) == (P.ERR, "announced-id")
        assert not thief.poll(500)  # nothing else: no START, no data
        assert "g" not in service.stats_now()["streams"]["exp/1/det"]["groups"]
        thief.close(0)
    finally:
        context.term()
        service.stop()


def test_stats_never_show_a_routing_id() -> None:
    """A member without a member id used to appear in STATS under its routing id (hex): the id to announce next."""
    service = start_service()
    try:
        produce(service.endpoint, "exp/1/det", 4, end=False)
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(service.endpoint)
        sock.send(P.envelope(P.SUB, {"s": "exp/1/det", "g": "g", "pol": "lossless", "c": 2}))  # no member id
        assert sock.poll(5000) and P.open_envelope(sock.recv_multipart()[0])[0] == P.START
        wait_until(lambda: service.stats_now()["streams"]["exp/1/det"]["groups"]["g"]["members"] == 1)
        routing_ids = [identity[1:].hex() for identity in service._members]
        assert routing_ids
        sock.send(P.envelope(P.STATS))
        while True:
            assert sock.poll(5000)
            parts = sock.recv_multipart()
            if P.open_envelope(parts[0])[0] == P.STATS:
                break
        shown = parts[1].decode() + json.dumps(service.stats_now())
        assert not any(routing_id in shown for routing_id in routing_ids)
        (member,) = json.loads(parts[1])["streams"]["exp/1/det"]["groups"]["g"]["member_credit"]
        assert member.startswith("anonymous-")
        sock.close(0)
    finally:
        service.stop()
