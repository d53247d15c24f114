"""The client library: decoded and raw deliveries, closing, errors, stats."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.client import ConsumerError, Delivery, subscribe
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.serializers.base import create
from tests.buffer.support import Producer, free_port, group_state, produce, stream_state, wait_until

STREAM = "exp/1/det"


def test_decoded_messages_carry_arrays_and_metadata(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 3)
    messages = list(subscribe(service.endpoint, STREAM, timeout_s=10))
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [f.event for f in frames] == [0, 1, 2]
    assert frames[2].array("data").dtype == np.uint16 and (frames[2].array("data") == 2).all()
    assert frames[0].stream_id == "det" and frames[0].run == 1
    assert isinstance(messages[-1], EndMessage) and messages[-1].counts == {"read": 3}


def test_raw_deliveries_are_the_producers_bytes(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 4)
    deliveries = list(subscribe(service.endpoint, STREAM, decode=False, timeout_s=10))
    assert all(isinstance(d, Delivery) for d in deliveries)
    assert [d.kind for d in deliveries] == ["start", "event", "event", "event", "event", "end"]
    assert [d.offset for d in deliveries[1:-1]] == [0, 1, 2, 3]
    decoded = create("msgpack").decode([deliveries[2].frames[0].buffer])
    assert isinstance(decoded, Frame) and decoded.event == 1


def test_closing_early_leaves_the_group_and_returns_messages(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 20)
    with subscribe(service.endpoint, STREAM, group="g", credit=5, timeout_s=10) as sub:
        assert isinstance(next(sub), StartMessage)
        next(sub)
    wait_until(lambda: group_state(service.endpoint, "g").get("members") == 0)
    state = group_state(service.endpoint, "g")
    assert state["committed"] == 1 and state["inflight"] == 0
    rest = [m.event for m in subscribe(service.endpoint, STREAM, group="g", timeout_s=10) if isinstance(m, Frame)]
    assert rest == list(range(1, 20))


def test_a_silent_buffer_raises_after_the_timeout() -> None:
    sub = subscribe(f"tcp://127.0.0.1:{free_port()}", STREAM, timeout_s=0.5, heartbeat_s=0.1)
    with pytest.raises(ConsumerError, match=r"no answer for 0\.5 s"):
        next(sub)
    sub.close()


def test_lag_and_skips_are_reported(service: BufferService) -> None:
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(10)
    wait_until(lambda: stream_state(service.endpoint).get("head") == 10)
    sub = subscribe(service.endpoint, STREAM, group="lagging", credit=1, timeout_s=10)
    seen: list[Any] = [next(sub), next(sub)]
    assert isinstance(seen[1], Frame) and sub.stats.lag == 9
    producer.end()
    producer.close()
    list(sub)
    assert sub.stats.yielded == 10 and sub.stats.lag == 0
