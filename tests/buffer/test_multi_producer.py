"""Several producers on one stream (MPI ranks): identical starts join, each has its own sequence and acks, one end."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.errors import HandlerError
from photonstream.frames import EndMessage, Frame, StartMessage
from tests.buffer.support import Producer, events_of, start_service, stream_state

STREAM = "exp/7/ranks"
RANKS = 3
PER_RANK = 40


def rank_producer(endpoint: str, rank: int, start: StartMessage, **options: Any) -> Producer:
    """A rank's buffer handler: the shared start message (bytes identical), its own producer id and sequence."""
    producer = Producer(endpoint, STREAM, window=4, **options)
    producer.seq = rank
    producer.handler.handle(start, producer.serializer.encode(start))
    return producer


def send_share(producer: Producer, rank: int) -> None:
    for i in range(PER_RANK):
        event = rank + RANKS * i  # the ranks split the events round-robin, as Shard does
        data = np.full((4, 4), event, dtype=np.uint16)
        frame = Frame(event=event, arrays={"data": data}, stream_id="ranks", run=7)
        producer.emit(frame)
    producer.close()  # waits until the buffer has acked all of this rank's messages


def shared_start() -> StartMessage:
    """Rank 0's start message as every rank gets it (broadcast): one stamp, so the same bytes from every rank."""
    return StartMessage("ranks", "exp", 7, "custom", serializer="msgpack", seq=0, created_ns=1)


def test_three_ranks_write_one_stream_and_rank0_ends_it(service: BufferService) -> None:
    start = shared_start()
    producers = [rank_producer(service.endpoint, rank, start) for rank in range(RANKS)]
    consumer = subscribe(service.endpoint, STREAM, group="all", timeout_s=20)
    received: list[Any] = []
    reader = threading.Thread(target=lambda: received.extend(consumer), daemon=True)
    reader.start()
    threads = [threading.Thread(target=send_share, args=(p, r)) for r, p in enumerate(producers[1:], start=1)]
    for thread in threads:
        thread.start()
    rank0 = producers[0]
    for i in range(PER_RANK):  # rank 0 sends its share in this thread, then waits for the others
        event = RANKS * i
        rank0.emit(Frame(event=event, arrays={"data": np.full((4, 4), event, np.uint16)}, stream_id="ranks", run=7))
    for thread in threads:
        thread.join(30)
    assert stream_state(service.endpoint, STREAM)["producers"] == RANKS
    rank0.emit(EndMessage("ranks", events_sent=RANKS * PER_RANK, counts={"read": RANKS * PER_RANK}))
    rank0.close()
    reader.join(30)

    assert isinstance(received[0], StartMessage) and isinstance(received[-1], EndMessage)
    assert sum(isinstance(m, StartMessage) for m in received) == 1  # the joins added no second start
    assert sorted(events_of(received)) == list(range(RANKS * PER_RANK))  # every rank's data, nothing twice
    offsets = stream_state(service.endpoint, STREAM)
    assert offsets["head"] == RANKS * PER_RANK and offsets["messages_in"] == RANKS * PER_RANK + 2

    late = Producer(service.endpoint, STREAM)
    with pytest.raises(HandlerError, match="already ended"):  # no joining, and no data, after the end
        late.handler.handle(start, late.serializer.encode(start))
        late.close()


def test_data_after_the_end_is_refused_and_strangers_cannot_write(service: BufferService) -> None:
    start = shared_start()
    rank0, rank1 = (rank_producer(service.endpoint, r, start) for r in range(2))
    rank1.frames(2)
    rank1.handler.close()
    rank0.frames(1)
    rank0.end()
    rank0.handler.close()
    with pytest.raises(HandlerError, match="already ended"):
        rank1.handler.open()
        rank1.frames(1)
        rank1.handler.close()

    stranger = Producer(service.endpoint, "exp/7/other")
    stranger.handler.stream = STREAM  # never sent the start message of STREAM
    with pytest.raises(HandlerError, match="never joined"):
        stranger.frames(1)
        stranger.close()


def test_acks_are_per_producer_on_a_durable_stream(tmp_path: Path) -> None:
    service = start_service(data_dir=tmp_path / "data")
    try:
        start = shared_start()
        producers = [rank_producer(service.endpoint, r, start, durable=True) for r in range(2)]
        threads = [threading.Thread(target=send_share, args=(p, r)) for r, p in enumerate(producers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert all(not p.handler._unacked for p in producers)  # each got acks for all of its own messages
        assert stream_state(service.endpoint, STREAM)["head"] == 2 * PER_RANK
    finally:
        service.stop()
    # after a restart the buffer cannot tell the producers' resends from new data: it refuses them (never duplicates)
    restarted = start_service(data_dir=tmp_path / "data")
    try:
        with pytest.raises(HandlerError, match="restarted while several producers wrote"):
            again = rank_producer(restarted.endpoint, 0, start, durable=True)
            again.frames(1)
            again.close()
        assert restarted.stats_now()["streams"][STREAM]["head"] == 2 * PER_RANK  # the stored data is all there
    finally:
        restarted.stop()
