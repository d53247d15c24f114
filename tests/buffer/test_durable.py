"""Durable streams: segments on disk, committed offsets, recovery after kill -9 of the buffer."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from photonstream.buffer.log import StreamLog
from photonstream.client import subscribe
from photonstream.errors import HandlerError
from photonstream.frames import EndMessage
from tests.buffer.support import (
    Producer,
    ServiceProcess,
    events_of,
    free_port,
    group_state,
    stream_state,
    wait_until,
)

STREAM = "exp/1/det"


def persisted_commit(data_dir: Path, group: str) -> int:
    """The committed offset of ``group`` as the buffer last wrote it to disk (-1 if not yet)."""
    path = data_dir / "exp" / "1" / "det" / "groups.json"
    try:
        groups = json.loads(path.read_text())["groups"]
    except (OSError, ValueError):
        return -1
    return next((int(g["committed"]) for g in groups if g["name"] == group), -1)


def test_kill9_of_the_buffer_loses_nothing_of_a_durable_stream(tmp_path: Path) -> None:
    port = free_port()
    service = ServiceProcess(tmp_path, port, "--segment-mb", "0.01")
    try:
        producer = Producer(service.endpoint, STREAM, durable=True, resend_s=0.3, send_timeout_s=30)
        producer.start()
        producer.frames(20)
        sub = subscribe(service.endpoint, STREAM, group="g", credit=4, timeout_s=30, heartbeat_s=0.2)
        got = [next(sub) for _ in range(11)]  # the start message and 10 frames
        sub.commit()
        wait_until(lambda: persisted_commit(tmp_path, "g") == 10, what="the commit on disk")
        producer.frames(5)  # some of these may be in flight when the buffer dies
        service.kill9()
        service = ServiceProcess(tmp_path, port, "--segment-mb", "0.01")  # same data dir and port
        assert group_state(service.endpoint, "g")["committed"] >= 10
        producer.frames(15)
        producer.end()
        producer.close()  # resends whatever the dead buffer had not stored
        got += list(sub)  # the same subscription rejoins and resumes
        assert events_of(got) == list(range(40))
        assert sub.stats.rejoins >= 1
        replay = list(subscribe(service.endpoint, STREAM, group="replay", timeout_s=10))
        assert events_of(replay) == list(range(40))
        assert replay[0].geometry.distance_m == 0.12
    finally:
        service.stop()


def test_a_new_consumer_of_a_recovered_group_starts_at_its_committed_offset(tmp_path: Path) -> None:
    port = free_port()
    service = ServiceProcess(tmp_path, port)
    try:
        producer = Producer(service.endpoint, STREAM, durable=True)
        producer.start()
        producer.frames(30)
        producer.end()
        producer.close()
        first = subscribe(service.endpoint, STREAM, group="g", credit=1, timeout_s=10)
        got = [next(first) for _ in range(13)]
        first.commit()
        wait_until(lambda: persisted_commit(tmp_path, "g") == 12, what="the commit on disk")
        service.kill9()
        first.close()
        service = ServiceProcess(tmp_path, port)
        rest = list(subscribe(service.endpoint, STREAM, group="g", timeout_s=10))
        assert events_of(got) == list(range(12))
        assert events_of(rest) == list(range(12, 30))
    finally:
        service.stop()


def test_a_torn_record_is_cut_off_on_recovery(tmp_path: Path) -> None:
    log = StreamLog("exp/1/det", directory=tmp_path, durable=True, serializer="msgpack", producer="p")
    log.open_files()
    log.add_control("start", 0, 0, [b"start"], time.time_ns())
    for i in range(5):
        log.append("event", i + 1, i + 1, [b"x" * 100, b"y" * i], time.time_ns())
    log.close()
    segment = next(tmp_path.glob("*.seg"))
    good_size = segment.stat().st_size
    with open(segment, "ab") as fh:
        fh.write(b"PSR1\x10\x00\x00\x00")  # a record header cut short by a crash
    recovered = StreamLog.recover(tmp_path, 1 << 20)
    assert (recovered.first, recovered.head, recovered.last_transport_seq) == (0, 5, 5)
    assert bytes(recovered.payload(recovered.get(4))[1]) == b"y" * 4
    assert bytes(recovered.start.frames[0]) == b"start"
    assert segment.stat().st_size == good_size


def test_a_failing_disk_gives_the_producer_a_clear_error(tmp_path: Path) -> None:
    """Writes past RLIMIT_FSIZE fail like a full disk (EFBIG instead of ENOSPC)."""
    port = free_port()
    service = ServiceProcess(tmp_path, port, limit_file_bytes=64 * 1024)
    try:
        producer = Producer(service.endpoint, STREAM, durable=True, send_timeout_s=10)
        producer.start()
        with pytest.raises(HandlerError, match=r"cannot write to .*File too large"):
            producer.frames(200, shape=(32, 32))
            producer.close()
        sub = subscribe(service.endpoint, STREAM, group="g", timeout_s=10, credit=100)
        stored = stream_state(service.endpoint)["head"]
        assert 0 < stored < 200
        got = list(sub)
        assert events_of(got) == list(range(stored))  # what was accepted is all there, in order
        end = got[-1]  # then the buffer, which refuses the producer for good, ends the stream for its consumers
        assert isinstance(end, EndMessage) and end.reason == "failed" and "File too large" in end.error
    finally:
        service.stop()
