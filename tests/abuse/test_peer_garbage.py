"""Garbage from the other end: a detector's PULL (``stream2`` source), a pipeline's PUSH/PUB (``read_stream``), a
fake buffer answering the buffer client (``subscribe``) and the producer (``buffer`` handler) with broken replies.

Numbers asserted: each case ends in exactly one error of the library's own kind (SourceError, SerializerError,
ConsumerError, HandlerError: one line naming what was wrong), other exceptions = 0, hangs = 0 (every read has a
deadline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import cbor2
import numpy as np
import pytest
import zmq

from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from photonstream.consumers.pull import read_stream
from photonstream.errors import HandlerError, PhotonstreamError, SerializerError, SourceError
from photonstream.serializers.base import create
from photonstream.sources.stream2 import Stream2Options, Stream2Source
from tests import stream2_simulator as sim
from tests.buffer.support import Producer
from tests.helpers import sample_frame, sample_start

SHAPE = (4, 4)


def spec_start(**changes: Any) -> bytes:
    start = cbor2.loads(sim.start_message(1, ["t1"], SHAPE, np.zeros(SHAPE, np.uint32), "uint16")[3:])
    return sim.encode({**start, **changes})


def spec_image(**changes: Any) -> bytes:
    image = cbor2.loads(sim.image_message(1, 0, {"t1": (np.zeros(SHAPE, np.uint16), None)})[3:])
    return sim.encode({**image, **changes})


def mask(shape: tuple[int, int]) -> Any:
    return sim.multidim(np.zeros(shape, np.uint32))


def wire_array(shape: Any, content: Any, tag: int = 69) -> cbor2.CBORTag:
    """A Stream V2 array: tag 40 around a typed array (tag 69: little-endian uint16) holding ``content``."""
    return cbor2.CBORTag(40, [shape, cbor2.CBORTag(tag, content)])


CORRUPT_BSLZ4 = cbor2.CBORTag(56500, ["bslz4", 4, b"\xff" * 40])


BROKEN_DETECTOR_SERIES = {
    "random bytes": [b"\x00\x01garbage"],
    "empty message": [b""],
    "CBOR that is not a map": [sim.MAGIC + cbor2.dumps([1, 2, 3])],
    "truncated start": [spec_start()[:-40]],
    "translation of text": [spec_start(detector_translation=[0, 0, "far"])],
    "channel masks of different shapes": [spec_start(pixel_mask={"a": mask((2, 2)), "b": mask((3, 3))})],
    "array claiming 2**80 pixels": [spec_start(flatfield={"t1": wire_array([2**40, 2**40], b"")})],
    "corrupt bslz4 mask": [spec_start(pixel_mask={"t1": wire_array(SHAPE, CORRUPT_BSLZ4, tag=70)})],
    "image without image_id": [spec_start(), spec_image(image_id=None)],
    "image with data of text": [spec_start(), spec_image(data="pixels")],
    "image with a cut typed array": [spec_start(), spec_image(data={"t1": wire_array(SHAPE, b"\x00" * 5)})],
    "image of random bytes": [spec_start(), b"\xd9\xd9\xf7\xff\xff"],
}  # fmt: skip


@pytest.mark.parametrize("name", list(BROKEN_DETECTOR_SERIES))
def test_a_detector_sending_garbage_gives_one_source_error(name: str) -> None:
    detector = sim.SimulatedDetector([*BROKEN_DETECTOR_SERIES[name], sim.end_message(1)])
    detector.start()
    source = Stream2Source(Stream2Options(address=detector.address, start_timeout_s=5, idle_timeout_s=5))
    try:
        with pytest.raises(SourceError, match="stream2: malformed message") as refused:
            source.open()
            list(source.events())
    finally:
        source.close()
        detector.stop()
    assert "\n" not in str(refused.value)


def pushed(messages: list[list[bytes]], pub: bool = False) -> tuple[str, Callable[[], None]]:
    """A PUSH (or PUB) socket on a free port sending ``messages`` once a reader is connected."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PUB if pub else zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def run() -> None:
        for _ in range(50 if pub else 1):  # PUB drops what is sent before the reader subscribed: repeat
            for parts in messages:
                sock.send_multipart(parts)
            if stop.wait(0.05):
                break

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def close() -> None:
        stop.set()
        thread.join(10)
        sock.close()

    return f"tcp://127.0.0.1:{port}", close


MSGPACK_FRAME = bytes(create("msgpack").encode(sample_frame())[0])
BROKEN_PIPELINE_STREAMS = {
    "random bytes": ([[b"\x00\x01\x02"]], False),
    "empty frame": ([[b""]], False),
    "msgpack cut in half": ([[MSGPACK_FRAME[: len(MSGPACK_FRAME) // 2]]], False),
    "hdf5 magic then junk": ([[b"\x89HDF\r\n\x1a\n" + b"\x00" * 64]], False),
    "msgpack start then cbor junk": ([[bytes(create("msgpack").encode(sample_start())[0])], [b"\xa1\xff"]], False),
    "pub message with a topic only": ([[b"det"]], True),
}


@pytest.mark.parametrize("name", list(BROKEN_PIPELINE_STREAMS))
def test_read_stream_fed_garbage_raises_a_serializer_error(name: str) -> None:
    messages, pub = BROKEN_PIPELINE_STREAMS[name]
    endpoint, close = pushed(messages, pub)
    try:
        with pytest.raises(SerializerError) as refused:
            for _ in read_stream(endpoint, idle_timeout_s=5, subscribe="" if pub else None):
                pass
    finally:
        close()
    assert "\n" not in str(refused.value)


class FakeBuffer:
    """A ROUTER that answers every message of its peer with the next of ``replies`` (then stays silent)."""

    def __init__(self, replies: list[list[bytes]]) -> None:
        self.socket = zmq.Context.instance().socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.socket.bind_to_random_port('tcp://127.0.0.1')}"
        self.replies = list(replies)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            identity = self.socket.recv_multipart()[0]
            if self.replies:
                self.socket.send_multipart([identity, *self.replies.pop(0)])

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.socket.close()


START_PAYLOAD = bytes(create("msgpack").encode(sample_start())[0])
GREETING = [P.envelope(P.START, {"z": "msgpack"}), START_PAYLOAD]
BROKEN_CONSUMER_REPLIES = {
    "MSG without offset": [GREETING, [P.envelope(P.MSG, {"q": 1}), MSGPACK_FRAME]],
    "MSG with offset of text": [GREETING, [P.envelope(P.MSG, {"o": "x"}), MSGPACK_FRAME]],
    "MSG with offset inf": [GREETING, [P.envelope(P.MSG, {"o": float("inf")}), MSGPACK_FRAME]],
    "START naming no serializer we know": [[P.envelope(P.START, {"z": "nonsense"}), START_PAYLOAD]],
    "START with a garbage payload": [[P.envelope(P.START, {"z": "msgpack"}), b"\xc1\xc1"]],
    "MSG with a garbage payload": [GREETING, [P.envelope(P.MSG, {"o": 0}), b"\x00"]],
    "END with counts of text": [GREETING, [P.envelope(P.END, {"x": "many"}), b"\x80"]],
    "ERR with a message that is a map": [[P.envelope(P.ERR, {"c": "x", "m": {"a": 1}})]],
    "only random bytes": [[b"\x00junk"], [b"PSB1"], [P.PROTOCOL + P.MSG + b"\xc1"]],
}  # fmt: skip


@pytest.mark.parametrize("name", list(BROKEN_CONSUMER_REPLIES))
def test_the_buffer_client_fed_garbage_raises_one_photonstream_error(name: str) -> None:
    fake = FakeBuffer(BROKEN_CONSUMER_REPLIES[name])
    try:
        with pytest.raises(PhotonstreamError) as refused:
            for _ in subscribe(fake.endpoint, "exp/1/det", timeout_s=2, heartbeat_s=0.2):
                pass
    finally:
        fake.close()
    assert "\n" not in str(refused.value)


BROKEN_PRODUCER_REPLIES = {
    "ACK without n": [[P.envelope(P.ACK, {"s": "exp/1/det"})]],
    "ACK with n of text": [[P.envelope(P.ACK, {"s": "exp/1/det", "n": "x"})]],
    "ACK with n inf": [[P.envelope(P.ACK, {"s": "exp/1/det", "n": float("inf")})]],
    "NACK with n of a list": [[P.envelope(P.NACK, {"s": "exp/1/det", "n": [1]})]],
    "ERR with a message that is a list": [[P.envelope(P.ERR, {"c": "x", "m": [1, 2]})]],
    "random bytes only": [[b"\x00junk"], [b"\xff" * 100]],
}


@pytest.mark.parametrize("name", list(BROKEN_PRODUCER_REPLIES))
def test_the_buffer_handler_fed_garbage_raises_one_handler_error(name: str) -> None:
    fake = FakeBuffer(BROKEN_PRODUCER_REPLIES[name])
    try:
        with pytest.raises(HandlerError) as refused:
            producer = Producer(fake.endpoint, "exp/1/det", send_timeout_s=2, resend_s=0.2)
            producer.start()
            producer.frames(3)
            producer.close()
    finally:
        fake.close()
    assert "\n" not in str(refused.value)


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before + 1  # detector/pusher threads were joined
