"""Producers: refusals with a clear error, other streams unharmed; budgets slow the producer, never lose data."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import zmq

from photonstream.buffer import BufferService
from photonstream.buffer import protocol as P
from photonstream.client import subscribe
from photonstream.errors import HandlerError
from tests.buffer.support import Producer, events_of, group_state, produce, stream_state, wait_until

STREAM = "exp/1/det"


def raw_request(endpoint: str, *parts: bytes) -> dict[str, Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(list(parts))
        assert sock.poll(5000), "no answer"
        reply = sock.recv_multipart()
        command, header = P.open_envelope(reply[0])
        assert command == P.ERR
        return header
    finally:
        sock.close()


def test_malformed_messages_get_a_clear_error_and_other_streams_flow(service: BufferService) -> None:
    good = Producer(service.endpoint, "exp/1/good")
    good.start()
    good.frames(5)
    assert raw_request(service.endpoint, b"hello")["c"] == "protocol"
    assert raw_request(service.endpoint, P.PROTOCOL + P.PUB + b"\xc1not msgpack")["c"] == "malformed"
    bad_address = raw_request(service.endpoint, P.envelope(P.PUB, {"s": "../etc", "k": "event"}), b"x")
    assert bad_address["c"] == "bad-address" and "experiment/run/stream-id" in bad_address["m"]
    bad_kind = raw_request(service.endpoint, P.envelope(P.PUB, {"s": STREAM, "k": "image"}), b"x")
    assert "unknown message kind" in bad_kind["m"]
    no_start = raw_request(service.endpoint, P.envelope(P.PUB, {"s": STREAM, "k": "event", "n": 1, "p": "x"}), b"x")
    assert no_start["c"] == "no-start"
    assert raw_request(service.endpoint, P.envelope(b"F"))["c"] == "unknown-command"
    good.frames(5)
    good.end()
    good.close()
    assert events_of(list(subscribe(service.endpoint, "exp/1/good", timeout_s=10))) == list(range(10))


def test_oversized_messages_are_refused_with_the_limit_named(make_service: Any) -> None:
    service = make_service(max_message_bytes=4096)
    other = Producer(service.endpoint, "exp/1/small")
    other.start()
    big = Producer(service.endpoint, STREAM)
    big.start()
    with pytest.raises(HandlerError, match=r"exceeds the limit of 4096 bytes"):
        big.frames(1, shape=(64, 64))  # 8 KiB of pixels
        big.frames(1)  # the refusal may arrive after the next send
        big.close()
    other.frames(3)
    other.end()
    other.close()
    assert events_of(list(subscribe(service.endpoint, "exp/1/small", timeout_s=10))) == [0, 1, 2]


def test_a_second_producer_with_another_start_message_is_refused(service: BufferService) -> None:
    first = Producer(service.endpoint, STREAM)
    first.start()
    wait_until(lambda: stream_state(service.endpoint, STREAM), what="the first start message to open the stream")
    second = Producer(service.endpoint, STREAM)
    with pytest.raises(HandlerError, match="another producer with a different start message"):
        second.start(source={"generator": "another run"})  # the refusal may come back while start() still runs
        second.frames(2)
        second.close()
    first.frames(2)
    first.end()
    first.close()


def test_durable_without_a_data_dir_is_refused(service: BufferService) -> None:
    with pytest.raises(HandlerError, match="needs a buffer started with --data-dir"):
        produce(service.endpoint, STREAM, 1, durable=True)


def test_full_memory_budget_slows_the_producer_until_the_lossless_group_reads(make_service: Any) -> None:
    service = make_service(memory_per_stream=32 * 1024)  # ~14 frames of 2 KiB; no data dir to spill to
    sub = subscribe(service.endpoint, STREAM, group="archive", credit=2, timeout_s=10)
    producer = Producer(service.endpoint, STREAM, window=4, send_timeout_s=20)
    producer.start()
    assert next(sub) is not None  # start message; the group now holds the log
    done = threading.Event()

    def produce_all() -> None:
        producer.frames(100, shape=(32, 32))
        producer.end()
        producer.close()
        done.set()

    writer = threading.Thread(target=produce_all)
    writer.start()
    wait_until(lambda: stream_state(service.endpoint).get("blocked"), what="the producer to be held")
    assert not done.is_set()
    state = stream_state(service.endpoint)
    assert "memory budget full" in state["blocked"] and "archive" in state["blocked"]
    assert state["memory_bytes"] <= 32 * 1024 + 5 * 2300  # the budget plus the producer's window
    got = events_of(list(sub))
    writer.join(10)
    assert done.is_set()
    assert got == list(range(100))


def test_full_memory_budget_gives_a_clear_error_when_nobody_reads(make_service: Any) -> None:
    service = make_service(memory_per_stream=16 * 1024)
    sub = subscribe(service.endpoint, STREAM, group="archive", credit=1, timeout_s=10)
    producer = Producer(service.endpoint, STREAM, window=4, send_timeout_s=0.5)
    producer.start()
    next(sub)
    with pytest.raises(HandlerError, match=r"accepted nothing for 0.5 s \(.*memory budget full.*archive"):
        producer.frames(60, shape=(32, 32))
    state = stream_state(service.endpoint)
    assert state["first"] == 0, "nothing the lossless group needs was dropped"
    got = []
    for message in sub:
        got.append(message)
        if len(events_of(got)) == state["head"]:
            break
    assert events_of(got) == list(range(state["head"]))
    sub.close()


def test_full_disk_budget_gives_a_clear_error(make_service: Any, tmp_path: Path) -> None:
    service = make_service(data_dir=tmp_path, memory_per_stream=8 * 1024, disk_per_stream=16 * 1024, segment_bytes=4096)
    sub = subscribe(service.endpoint, STREAM, group="archive", credit=1, timeout_s=10)
    producer = Producer(service.endpoint, STREAM, window=4, send_timeout_s=0.5)
    producer.start()
    next(sub)
    with pytest.raises(HandlerError, match=r"disk budget full"):
        producer.frames(80, shape=(32, 32))
    assert stream_state(service.endpoint)["first"] == 0


def test_memory_spills_to_disk_instead_of_slowing_the_producer(make_service: Any, tmp_path: Path) -> None:
    service = make_service(data_dir=tmp_path, memory_per_stream=16 * 1024, segment_bytes=16 * 1024)
    sub = subscribe(service.endpoint, STREAM, group="archive", credit=4, timeout_s=10)
    producer = Producer(service.endpoint, STREAM, send_timeout_s=5)
    producer.start()
    next(sub)  # the start message: the group holds the log from here (a group that joins later starts later)
    producer.frames(100, shape=(32, 32))  # 2 KiB each
    producer.end()
    producer.close()  # all acked although nobody has read anything yet
    state = stream_state(service.endpoint)
    assert state["memory_bytes"] <= 16 * 1024 and state["disk_bytes"] > 100 * 2048 - 16 * 1024
    assert events_of(list(sub)) == list(range(100))


def test_retention_by_age_and_size_never_takes_what_a_lossless_group_needs(make_service: Any) -> None:
    service = make_service(retention_s=0.3, retention_bytes=4096)
    holder = subscribe(service.endpoint, STREAM, group="archive", credit=1, timeout_s=10)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    next(holder)
    producer.frames(20)  # ~160 bytes each: over the size limit, and soon over the age limit
    wait_until(lambda: stream_state(service.endpoint).get("head") == 20)
    assert stream_state(service.endpoint)["first"] == 0  # the lossless group has read none of it yet
    assert events_of([next(holder) for _ in range(10)]) == list(range(10))
    holder.commit()
    wait_until(lambda: stream_state(service.endpoint)["first"] == 10, what="retention to evict what was acked")
    late = subscribe(service.endpoint, STREAM, group="late", timeout_s=10)
    producer.end()
    producer.close()
    assert events_of(list(late)) == list(range(10, 20))
    assert events_of(list(holder)) == list(range(10, 20))
    assert group_state(service.endpoint, "late")["expired"] == 0  # it started at the oldest offset still held


def test_a_spilled_frame_that_cannot_be_read_for_a_while_is_retried_not_lost(
    make_service: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from photonstream.buffer import log as buffer_log

    failures = {"left": 5}
    read = buffer_log.RecordFile.read

    def flaky_read(self: Any, record: Any) -> list[Any]:
        if failures["left"] > 0:  # the disk answers with an I/O error a few times (a loaded NFS server, say)
            failures["left"] -= 1
            raise OSError(5, "Input/output error")
        return read(self, record)

    monkeypatch.setattr(buffer_log.RecordFile, "read", flaky_read)
    service = make_service(data_dir=tmp_path, memory_per_stream=16 * 1024, segment_bytes=16 * 1024)
    sub = subscribe(service.endpoint, STREAM, group="archive", credit=4, timeout_s=10)
    producer = Producer(service.endpoint, STREAM, send_timeout_s=5)
    producer.start()
    next(sub)
    producer.frames(40, shape=(32, 32))  # 2 KiB each: most are spilled before anyone reads them
    producer.end()
    producer.close()
    events = events_of(list(sub))
    assert failures["left"] == 0  # the failing reads happened
    assert sorted(events) == list(range(40)) and len(events) == 40
    group = group_state(service.endpoint, "archive", STREAM)
    assert group["expired"] == 0
