"""zmq-push and zmq-pub with real sockets and a consumer in another process."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zmq
from pydantic import ValidationError

from photonstream.errors import ConfigError, HandlerError
from photonstream.frames import EndMessage, Frame
from photonstream.handlers.base import registry
from photonstream.serializers.base import create
from photonstream.transport.ports import free_tcp_port
from tests.helpers import assert_same_message, sample_frame, sample_start

ROOT = Path(__file__).resolve().parents[2]


def start_reader(endpoint: str, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.pull_reader", endpoint, str(out), *extra], cwd=ROOT)


def make_handler(kind: str, **options):
    cls = registry.get(kind)
    return cls(cls.Options(type=kind, **options))


@pytest.mark.parametrize("kind", ["zmq-push", "zmq-pub"])
def test_messages_reach_another_process_in_order(kind: str, tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    extra = {"wait_subscribers": 1} if kind == "zmq-pub" else {}
    reader = start_reader(endpoint, tmp_path / "got.pkl", *(["--topic", "epix"] if kind == "zmq-pub" else []))
    handler = make_handler(kind, address=endpoint, send_timeout_s=20, **extra)
    serializer = create("msgpack")
    sent = [sample_start(), *[sample_frame(i) for i in range(20)], EndMessage("epix", events_sent=20)]
    handler.open()
    for seq, message in enumerate(sent):
        message.seq = seq
        handler.handle(message, serializer.encode(message))
    handler.close()
    assert reader.wait(30) == 0
    got = pickle.loads((tmp_path / "got.pkl").read_bytes())
    assert len(got) == len(sent)
    for a, b in zip(sent, got, strict=True):
        assert_same_message(a, b)


def test_large_final_messages_are_not_lost_at_exit(tmp_path: Path) -> None:
    """The producer process exits right after close(); a late, slow reader still gets every big message."""
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    producer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import numpy as np
                from photonstream.frames import EndMessage, Frame
                from photonstream.handlers.zmq_push import ZmqPushHandler, ZmqPushOptions
                from photonstream.serializers.base import create
                from tests.helpers import sample_start
                h = ZmqPushHandler(ZmqPushOptions(address="{endpoint}", hwm=1000, send_timeout_s=30))
                s = create("msgpack")
                h.open()
                msgs = [sample_start()] + [
                    Frame(event=i, arrays={{"data": np.full((2048, 2048, 4), i, np.uint32)}}) for i in range(6)
                ] + [EndMessage("epix", events_sent=6)]
                for seq, m in enumerate(msgs):
                    m.seq = seq
                    h.handle(m, s.encode(m))
                h.close()
            """),
        ],
        cwd=ROOT,
    )
    reader = start_reader(endpoint, tmp_path / "got.pkl", "--delay", "1.0")
    assert producer.wait(60) == 0
    assert reader.wait(60) == 0
    got = pickle.loads((tmp_path / "got.pkl").read_bytes())
    events = [m for m in got if isinstance(m, Frame)]
    assert [e.event for e in events] == list(range(6))
    for e in events:  # 64 MiB each, every byte intact
        assert e.arrays["data"].shape == (2048, 2048, 4) and int(e.arrays["data"].max()) == e.event
        assert int(e.arrays["data"].min()) == e.event
    assert isinstance(got[-1], EndMessage) and got[-1].events_sent == 6


def test_no_consumer_fails_after_send_timeout_instead_of_hanging() -> None:
    handler = make_handler("zmq-push", address=f"tcp://127.0.0.1:{free_tcp_port()}", send_timeout_s=0.3, linger_s=0)
    handler.open()
    message = sample_start()
    with pytest.raises(HandlerError, match="no consumer took message"):
        handler.handle(message, create("msgpack").encode(message))
    handler.close()


def test_consumer_that_vanishes_does_not_hang_the_producer(tmp_path: Path) -> None:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    reader = start_reader(endpoint, tmp_path / "never.pkl", "--max", "3")
    handler = make_handler("zmq-push", address=endpoint, hwm=2, send_timeout_s=1.0, linger_s=0)
    serializer = create("msgpack")
    handler.open()
    big = Frame(event=0, arrays={"data": np.zeros((1024, 1024), np.uint32)})
    with pytest.raises(HandlerError, match="send_timeout_s"):
        for seq in range(10_000):
            big.seq = seq
            handler.handle(big, serializer.encode(big))
    assert reader.wait(30) == 3  # it really did go away after 3 messages
    with pytest.raises(HandlerError, match="undelivered"):
        handler.close()


def test_bad_endpoint_and_port_in_use_are_clear() -> None:
    with pytest.raises(ValidationError, match="not a ZeroMQ endpoint"):
        make_handler("zmq-push", address="localhost:5555")
    port = free_tcp_port()
    ctx = zmq.Context.instance()
    blocker = ctx.socket(zmq.PULL)
    blocker.bind(f"tcp://127.0.0.1:{port}")
    try:
        handler = make_handler("zmq-push", address=f"tcp://127.0.0.1:{port}", linger_s=0)
        with pytest.raises(ConfigError, match="cannot bind"):
            handler.open()
    finally:
        blocker.close(0)
