"""Shared by the buffer and client tests: a buffer service in a thread or a subprocess, and a producer."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from photonstream.buffer import BufferService, BufferSettings
from photonstream.buffer import protocol as P
from photonstream.frames import Calibration, CalibrationMessage, EndMessage, Frame, Geometry, StartMessage
from photonstream.handlers.buffer import BufferHandler, BufferOptions
from photonstream.serializers.base import create

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listening(endpoint: str) -> bool:
    """Whether something accepts TCP connections at ``tcp://host:port`` (a buffer process that has bound)."""
    host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
    with socket.socket() as probe:
        return probe.connect_ex((host, int(port))) == 0


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_service(**settings: Any) -> BufferService:
    settings.setdefault("bind", "tcp://127.0.0.1:*")
    service = BufferService(BufferSettings(**settings))
    service.start()
    return service


def remote_stats(endpoint: str, timeout: float = 5.0) -> dict[str, Any]:
    """The service's state, asked over ZeroMQ (works for a service in another process)."""
    import json

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([P.envelope(P.STATS)])
        if not sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no STATS answer from {endpoint}")
        return json.loads(sock.recv_multipart()[1])
    finally:
        sock.close()


class Producer:
    """Drives the ``buffer`` handler with msgpack-encoded photonstream messages, as the pipeline would."""

    def __init__(self, endpoint: str, stream: str = "exp/1/det", **options: Any) -> None:
        self.experiment, run, self.stream_id = stream.split("/")
        self.run = int(run)
        self.handler = BufferHandler(BufferOptions(address=endpoint, **options))
        self.serializer = create("msgpack")
        self.seq = 0
        self.events = 0
        self.handler.open()

    def emit(self, message: Any) -> None:
        message.seq = self.seq
        self.seq += 1
        self.handler.handle(message, self.serializer.encode(message))

    def start(self, **fields: Any) -> StartMessage:
        message = StartMessage(
            stream_id=self.stream_id,
            experiment=self.experiment,
            run=self.run,
            detector="epix10k2m",
            geometry=Geometry(75e-6, 0.12, (10.5, 20.25), 9500.0, (4, 4)),
            calibration=Calibration("ped-1", 1),
            arrays={"mask": np.eye(4, dtype=np.uint8)},
            serializer="msgpack",
            **fields,
        )
        self.emit(message)
        return message

    def frames(self, count: int, shape: tuple[int, ...] = (4, 4)) -> None:
        for _ in range(count):
            event = self.events
            self.events += 1
            data = np.full(shape, event % 60000, dtype=np.uint16)
            self.emit(Frame(event=event, arrays={"data": data}, stream_id=self.stream_id, run=self.run))

    def calibration(self, identifier: str) -> None:
        self.emit(CalibrationMessage(self.stream_id, Calibration(identifier, 2), from_event=self.events))

    def end(self) -> None:
        self.emit(EndMessage(self.stream_id, events_sent=self.events, counts={"read": self.events}))

    def close(self) -> None:
        self.handler.close()


def produce(endpoint: str, stream: str, count: int, end: bool = True, **options: Any) -> Producer:
    producer = Producer(endpoint, stream, **options)
    producer.start()
    producer.frames(count)
    if end:
        producer.end()
    producer.close()
    return producer


def events_of(messages: list[Any]) -> list[int]:
    return [m.event for m in messages if isinstance(m, Frame)]


class WireConsumer:
    """A consumer connection that speaks the buffer protocol directly (member "a" of group ``group``)."""

    def __init__(self, endpoint: str, stream: str = "exp/1/det", group: str = "workers", policy: str = "lossless"):
        self.stream, self.group, self.policy = stream, group, policy
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, command: bytes, header: dict[str, Any]) -> None:
        self.sock.send(P.envelope(command, header))

    def subscribe(self, session: str, credit: int, **extra: Any) -> dict[str, Any]:
        """SUB; returns the START header."""
        header = {"s": self.stream, "g": self.group, "pol": self.policy, "c": credit, "m": "a", "i": session}
        self.send(P.SUB, {**header, **extra})
        command, header = self.receive()
        assert command == P.START, (command, header)
        return header

    def receive(self) -> tuple[bytes, dict[str, Any]]:
        return P.open_envelope(self._parts()[0])

    def _parts(self) -> list[bytes]:
        if not self.sock.poll(5000):
            raise AssertionError("nothing from the buffer for 5 s")
        return self.sock.recv_multipart()

    def offsets(self, count: int) -> list[int]:
        """The offsets of the next ``count`` data messages (calibrations skipped)."""
        got: list[int] = []
        while len(got) < count:
            command, header = self.receive()
            if command == P.MSG:
                got.append(int(header["o"]))
        return got

    def group_state(self) -> dict[str, Any]:
        """The group's stats asked over this connection: they reflect everything it sent before (MSGs that arrive
        meanwhile are dropped)."""
        import json

        self.send(P.STATS, {})
        while True:
            parts = self._parts()
            command, _ = P.open_envelope(parts[0])
            if command == P.STATS:
                return json.loads(parts[1])["streams"][self.stream]["groups"][self.group]

    def cut(self) -> None:
        """The connection is gone, and with it anything this consumer did not send."""
        self.sock.close(linger=0)


class ServiceProcess:
    """``photonstream.buffer.cli serve`` in a subprocess (for kill -9 tests)."""

    def __init__(self, data_dir: Path, port: int, *args: str, limit_file_bytes: int | None = None) -> None:
        self.endpoint = f"tcp://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", self.endpoint,
               "--data-dir", str(data_dir), *args]  # fmt: skip

        def limit_files() -> None:  # in the child: writes past the limit fail with EFBIG, like a full disk
            import resource

            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

        preexec = limit_files if limit_file_bytes is not None else None
        self.proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=preexec
        )
        wait_until(self._answers, 20, f"buffer service at {self.endpoint}")

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"buffer service exited: {self.proc.stderr.read().decode()[-2000:]}")
        try:
            remote_stats(self.endpoint, timeout=0.5)
            return True
        except AssertionError:
            return False

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()


def group_state(endpoint: str, group: str, stream: str = "exp/1/det") -> dict[str, Any]:
    """One group's entry of the service's stats ({} while the stream or group does not exist)."""
    return remote_stats(endpoint)["streams"].get(stream, {}).get("groups", {}).get(group, {})


def stream_state(endpoint: str, stream: str = "exp/1/det") -> dict[str, Any]:
    return remote_stats(endpoint)["streams"].get(stream, {})


@pytest.fixture
def make_service() -> Iterator[Callable[..., BufferService]]:
    """Start buffer services in threads (loopback, any port); all are stopped after the test."""
    services: list[BufferService] = []

    def make(**settings: Any) -> BufferService:
        service = start_service(**settings)
        services.append(service)
        return service

    yield make
    for service in services:
        service.stop()


@pytest.fixture
def service(make_service: Callable[..., BufferService]) -> BufferService:
    return make_service()
