"""Garbage on the buffer's ROUTER while a control stream flows: random bytes, wrong protocol tags, unknown
commands, cut envelopes, PUBs without payload, a 4 MB frame, every header field set to hostile values, raw TCP
junk; and an oversized producer message.

Numbers asserted: control events lost = 0 and duplicated = 0 (sent before, during and after the garbage),
refused messages answered with ERR = all of them, refusals counted in the service's stats = all of them,
unexpected errors in the service = 0, the service thread alive = 1.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from photonstream.errors import HandlerError
from photonstream.frames import EndMessage, Frame
from tests.abuse.garbage import Attacker, hostile_headers, raw_tcp_junk, refused_catalogue
from tests.buffer.support import Producer, events_of, wait_until

CONTROL = "control/1/det"
PHASE = 20  # control events sent before, during and after the garbage


class ControlReader:
    """A lossless consumer of the control stream, in a thread."""

    def __init__(self, endpoint: str) -> None:
        self.messages: list[Any] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(endpoint,), daemon=True)
        self.thread.start()

    def _run(self, endpoint: str) -> None:
        try:
            self.messages.extend(subscribe(endpoint, CONTROL, group="control", timeout_s=30))
        except BaseException as exc:
            self.error = exc

    def finish(self) -> list[Any]:
        self.thread.join(40)
        assert not self.thread.is_alive(), "the control consumer never got its end message"
        assert self.error is None, self.error
        return self.messages


def rejected(service: BufferService) -> dict[str, int]:
    return dict(service.stats_now()["service"]["rejected"])


def test_garbage_on_the_router_is_refused_and_counted_while_a_control_stream_flows(
    make_service: Callable[..., BufferService],
) -> None:
    service = make_service()
    reader = ControlReader(service.endpoint)
    producer = Producer(service.endpoint, CONTROL)
    producer.start()
    producer.frames(PHASE)  # before

    catalogue = refused_catalogue()
    attacker = Attacker(service.endpoint)
    for i, (_, parts) in enumerate(catalogue):  # during: garbage and control frames interleaved
        attacker.send(parts)
        if i % (len(catalogue) // PHASE + 1) == 0 and producer.events < 2 * PHASE:
            producer.frames(1)
    producer.frames(2 * PHASE - producer.events)
    replies = attacker.replies(expected=len(catalogue))
    attacker.close()
    connections = raw_tcp_junk(service.endpoint)

    producer.frames(PHASE)  # after
    producer.end()
    producer.close()
    messages = reader.finish()

    events = events_of(messages)
    assert events == list(range(3 * PHASE)), f"lost {sorted(set(range(3 * PHASE)) - set(events))}"
    assert isinstance(messages[-1], EndMessage)
    assert replies == {P.ERR: len(catalogue)}
    counts = rejected(service)
    assert sum(counts.values()) == len(catalogue)
    assert counts.get("internal", 0) == 0
    assert connections == 4 and service._thread is not None and service._thread.is_alive()


def test_every_header_field_set_to_hostile_values_leaves_the_service_serving(
    make_service: Callable[..., BufferService],
) -> None:
    """inf, nan, 2**64-1, wrong types... in every field of every command: refused or harmless, never fatal.
    (Before the fix, one PUB with n=inf, or a SUB with c=inf, stopped the service's loop: OverflowError.)"""
    service = make_service()
    reader = ControlReader(service.endpoint)
    producer = Producer(service.endpoint, CONTROL)
    producer.start()
    producer.frames(PHASE)
    sent = 0
    for _, parts in hostile_headers():
        attacker = Attacker(service.endpoint)  # a peer of its own: a SUB that was accepted makes it a member
        attacker.send(parts)
        attacker.replies(expected=1, timeout_s=0.05)
        attacker.close()
        sent += 1
        if sent % 40 == 0:
            producer.frames(1)
    producer.frames(2 * PHASE - producer.events)
    producer.end()
    producer.close()
    messages = reader.finish()

    assert sent > 300
    assert events_of(messages) == list(range(2 * PHASE))
    counts = rejected(service)
    assert counts.get("internal", 0) == 0
    assert counts.get("malformed", 0) + counts.get("bad-request", 0) + counts.get("bad-address", 0) > 100
    assert service._thread is not None and service._thread.is_alive()


def test_an_oversized_message_is_refused_to_its_producer_only(make_service: Callable[..., BufferService]) -> None:
    limit = 1 << 20
    service = make_service(max_message_bytes=limit)
    reader = ControlReader(service.endpoint)
    control = Producer(service.endpoint, CONTROL)
    control.start()
    control.frames(PHASE)

    big = Producer(service.endpoint, "control/1/big", send_timeout_s=10)
    big.start()
    with pytest.raises(HandlerError, match=rf"exceeds the limit of {limit} bytes") as refused:
        big.emit(Frame(event=0, arrays={"data": np.zeros(limit, np.uint16)}, stream_id="big", run=1))  # 2 MiB
        big.close()
    assert "\n" not in str(refused.value)

    control.frames(PHASE)
    control.end()
    control.close()
    assert events_of(reader.finish()) == list(range(2 * PHASE))
    assert rejected(service) == {"oversized": 1}
    stats = wait_until(lambda: service.stats_now()["streams"].get("control/1/big"), what="stats of the big stream")
    assert (stats["messages_in"], stats["producer_errors"]) == (1, 1)  # its start only
