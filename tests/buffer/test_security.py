"""Data-plane security: CURVE and token listeners, the ZAP handler, per-stream grants on every SUB, PUB and result."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from photonstream.buffer import BufferService
from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials, ensure_keypair, token_hash
from photonstream.client import AccessRefusedError, ConsumerError, ResultPublisher, subscribe
from photonstream.errors import HandlerError
from photonstream.frames import EndMessage, Frame
from photonstream.handlers.buffer import BufferHandler, BufferOptions
from photonstream.serializers.base import create
from tests.buffer.support import Producer, events_of, start_service

STREAM_A, STREAM_B = "exp/1/aaaa", "exp/1/bbbb"


class StreamKeys:
    """What the API issues per stream: consumer and producer key pairs and tokens, and the buffer's grant."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.consumer = tuple(k.decode() for k in zmq.curve_keypair())
        self.producer = tuple(k.decode() for k in zmq.curve_keypair())
        tag = address.rsplit("/", 1)[1]
        self.token = (f"c.{tag}", f"consumer-secret-{tag}")
        self.producer_token = (f"p.{tag}", f"producer-secret-{tag}")

    def entry(self) -> dict[str, Any]:
        return {
            "addresses": [self.address],
            "consumers": [f"curve:{self.consumer[0]}", f"token:{self.token[0]}"],
            "producers": [f"curve:{self.producer[0]}", f"token:{self.producer_token[0]}"],
            "tokens": {
                self.token[0]: token_hash(self.token[1]),
                self.producer_token[0]: token_hash(self.producer_token[1]),
            },
        }

    def consumer_curve(self, service: BufferService) -> Credentials:
        assert service.public_key is not None
        return Credentials.curve(service.public_key, *self.consumer)

    def producer_curve(self, service: BufferService) -> Credentials:
        assert service.public_key is not None
        return Credentials.curve(service.public_key, *self.producer)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[BufferService]:
    service = start_service(security="curve", token_bind="tcp://127.0.0.1:*", keys_dir=tmp_path / "keys")
    yield service
    service.stop()


def secure_producer(service: BufferService, keys: StreamKeys, credentials: Credentials | None = None) -> Producer:
    producer = Producer.__new__(Producer)
    producer.experiment, run, producer.stream_id = keys.address.split("/")
    producer.run = int(run)
    options = BufferOptions(address=service.endpoint, security="curve", send_timeout_s=5)
    producer.handler = BufferHandler(options, credentials=credentials or keys.producer_curve(service))
    producer.serializer = create("msgpack")
    producer.seq = producer.events = 0
    producer.handler.open()
    return producer


def write_stream(service: BufferService, keys: StreamKeys, frames: int = 5) -> None:
    producer = secure_producer(service, keys)
    producer.start()
    producer.frames(frames)
    producer.end()
    producer.close()


def test_the_right_credential_reads_and_others_are_refused_without_data(secured: BufferService) -> None:
    a, b = StreamKeys(STREAM_A), StreamKeys(STREAM_B)
    secured.access.register([a.entry(), b.entry()])
    write_stream(secured, a, 5)

    with pytest.raises(ConsumerError, match="security handshake"):  # no credential on the CURVE listener
        list(subscribe(secured.endpoint, STREAM_A, timeout_s=5))
    stranger = Credentials.curve(secured.public_key or "", *(k.decode() for k in zmq.curve_keypair()))
    with pytest.raises(ConsumerError, match="refused the credentials"):  # a key nobody issued
        list(subscribe(secured.endpoint, STREAM_A, timeout_s=5, credentials=stranger))
    seen: list[Any] = []
    with pytest.raises(AccessRefusedError, match="may not read this stream"):  # stream B's key on stream A
        for message in subscribe(secured.endpoint, STREAM_A, timeout_s=5, credentials=b.consumer_curve(secured)):
            seen.append(message)
    assert seen == []

    right = list(subscribe(secured.endpoint, STREAM_A, timeout_s=10, credentials=a.consumer_curve(secured)))
    assert events_of(right) == list(range(5)) and isinstance(right[-1], EndMessage)
    assert secured.stats_now()["service"]["auth_refused"] >= 1


def test_token_link_authenticates_with_the_streams_secret_only(secured: BufferService) -> None:
    a = StreamKeys(STREAM_A)
    secured.access.register([a.entry()])
    write_stream(secured, a, 3)
    assert secured.token_endpoint is not None
    with pytest.raises(ConsumerError, match="refused the credentials"):
        list(
            subscribe(secured.token_endpoint, STREAM_A, timeout_s=5, credentials=Credentials.token(a.token[0], "guess"))
        )
    good = Credentials.token(*a.token)
    assert events_of(list(subscribe(secured.token_endpoint, STREAM_A, timeout_s=10, credentials=good))) == [0, 1, 2]


def test_producers_need_their_own_credential(secured: BufferService) -> None:
    a = StreamKeys(STREAM_A)
    secured.access.register([a.entry()])
    with pytest.raises(HandlerError, match="may not write this stream"):  # a consumer's key cannot produce
        producer = secure_producer(secured, a, credentials=a.consumer_curve(secured))
        producer.start()
        producer.close()
    with pytest.raises(HandlerError, match=r"needs the producer's credentials in \$PHOTONSTREAM_BUFFER_CREDENTIALS"):
        BufferHandler(BufferOptions(address=secured.endpoint, security="curve")).open()
    write_stream(secured, a, 2)  # the producer's own credential works
    assert secured.stats_now()["streams"][STREAM_A]["messages_in"] == 4


def test_results_are_accepted_only_for_the_credentials_stream(secured: BufferService) -> None:
    a, b = StreamKeys(STREAM_A), StreamKeys(STREAM_B)
    secured.access.register([a.entry(), b.entry()])
    with ResultPublisher(secured.endpoint, STREAM_A, a.consumer_curve(secured), group="idx", worker="w1") as results:
        first = results.publish("hit_rate", {"frames": 10, "hits": 4}, frames=(0, 9))
    with (
        ResultPublisher(secured.endpoint, STREAM_A, b.consumer_curve(secured)) as other,
        pytest.raises(AccessRefusedError, match="may not publish results"),
    ):
        other.publish("hit_rate", {"frames": 1, "hits": 1})
    kept = secured.results_after(0)
    assert [r["id"] for r in kept] == [first]
    assert kept[0]["by"] == f"curve:{a.consumer[0]}" and kept[0]["f"] == [0, 9] and kept[0]["g"] == "idx"
    assert msgpack.unpackb(kept[0]["d"]) == {"frames": 10, "hits": 4, "rate": 0.4}


def test_admin_commands_need_the_admin_key_and_stats_show_only_own_streams(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    admin_public, admin_secret = ensure_keypair(keys / "api", "api")
    (keys / "admins").mkdir(parents=True)
    (keys / "admins" / "api.key").write_text((keys / "api" / "api.key").read_text())
    service = start_service(security="curve", keys_dir=keys)
    try:
        a, b = StreamKeys(STREAM_A), StreamKeys(STREAM_B)
        assert service.public_key is not None
        admin = Credentials.curve(service.public_key, admin_public, admin_secret)
        reply = request(
            service.endpoint, admin, P.envelope(P.ACL, {"op": "register"}), msgpack.packb([a.entry(), b.entry()])
        )
        assert reply[0] == P.ACL and reply[1]["n"] == 2
        write_stream(service, a, 1)
        write_stream(service, b, 1)
        as_consumer = request(service.endpoint, a.consumer_curve(service), P.envelope(P.ACL, {"op": "sync"}), b"\x90")
        assert as_consumer[0] == P.ERR and as_consumer[1]["c"] == "forbidden"
        command, _, frames = request_full(service.endpoint, a.consumer_curve(service), P.envelope(P.STATS))
        assert command == P.STATS and list(json.loads(frames[0])["streams"]) == [STREAM_A]
        command, _, frames = request_full(service.endpoint, admin, P.envelope(P.STATS))
        assert sorted(json.loads(frames[0])["streams"]) == [STREAM_A, STREAM_B]
    finally:
        service.stop()


def request_full(endpoint: str, credentials: Credentials, *parts: bytes) -> tuple[bytes, dict[str, Any], list[bytes]]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    credentials.apply(sock)
    sock.connect(endpoint)
    try:
        sock.send_multipart(list(parts))
        assert sock.poll(5000), "no answer"
        reply = sock.recv_multipart()
        command, header = P.open_envelope(reply[0])
        return command, header, reply[1:]
    finally:
        sock.close()


def request(endpoint: str, credentials: Credentials, *parts: bytes) -> tuple[bytes, dict[str, Any]]:
    command, header, _ = request_full(endpoint, credentials, *parts)
    return command, header


class Tap:
    """A TCP relay in front of the buffer that keeps a copy of every byte a producer sends through it."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("tcp://").rsplit(":", 1)
        self.target = (host, int(port))
        self.seen = bytearray()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, keep: bool) -> None:
        try:
            while data := source.recv(65536):
                if keep:
                    self.seen += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


@pytest.mark.parametrize("security", ["curve", "token"])
def test_curve_links_are_encrypted_and_token_links_are_not(secured: BufferService, security: str) -> None:
    a = StreamKeys(STREAM_A)
    secured.access.register([a.entry()])
    assert secured.token_endpoint is not None
    tap = Tap(secured.endpoint if security == "curve" else secured.token_endpoint)
    credentials = a.producer_curve(secured) if security == "curve" else Credentials.token(*a.producer_token)
    producer = Producer.__new__(Producer)
    producer.experiment, producer.run, producer.stream_id = "exp", 1, "aaaa"
    options = BufferOptions(address=tap.endpoint, security=security, send_timeout_s=5)
    producer.handler = BufferHandler(options, credentials=credentials)
    producer.serializer = create("msgpack")
    producer.seq = producer.events = 0
    producer.handler.open()
    producer.start()
    marker = np.frombuffer(b"PHOTONSTREAM-MARKER" * 4, dtype=np.uint8)
    producer.emit(Frame(event=0, arrays={"data": marker}, stream_id="aaaa", run=1))
    producer.end()
    producer.close()
    tap.close()
    assert tap.seen  # the producer's bytes went through the tap
    assert (b"PHOTONSTREAM-MARKER" in tap.seen) == (security == "token")
    assert (a.producer_token[1].encode() in tap.seen) == (security == "token")  # PLAIN sends its secret in clear
    got = list(subscribe(secured.endpoint, STREAM_A, timeout_s=10, credentials=a.consumer_curve(secured)))
    assert np.array_equal(got[1].array("data"), marker)
