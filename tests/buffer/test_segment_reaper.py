"""Retention deletes old segments of a durable stream off the I/O loop (the reaper thread unlinks them), and
every message a group reads still arrives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from photonstream.buffer._records import REAPER, RecordFile
from photonstream.client import subscribe
from tests.buffer.support import Producer, events_of, stream_state, wait_until

STREAM = "exp/1/det"


def test_a_deleted_segment_is_closed_at_once_and_unlinked_by_the_reaper(tmp_path: Path) -> None:
    segment = RecordFile(tmp_path / "000.seg")
    assert segment.fd >= 0 and segment.path.exists()
    segment.delete_later()
    assert segment.fd == -1  # closed on the caller's thread
    assert REAPER.wait(10) and not segment.path.exists()


def test_retention_deleting_segments_of_a_durable_stream_loses_nothing_read(make_service: Any, tmp_path: Path) -> None:
    service = make_service(data_dir=tmp_path, segment_bytes=8192, retention_bytes=16384)
    reader = subscribe(service.endpoint, STREAM, group="live", timeout_s=20)
    producer = Producer(service.endpoint, STREAM, durable=True, send_timeout_s=20)
    producer.start()
    next(reader)
    producer.frames(100, shape=(16, 32))  # ~1 KiB each: ~12 segments of 8 KiB
    first_half = [next(reader) for _ in range(100)]
    reader.commit()  # acked: retention (16 KiB) may now delete what the group has read
    producer.frames(100, shape=(16, 32))  # each publish applies retention
    second_half = [next(reader) for _ in range(100)]
    reader.commit()
    producer.end()
    producer.close()
    assert events_of(first_half + second_half) == list(range(200))
    wait_until(lambda: stream_state(service.endpoint)["first"] >= 100, what="retention to drop what was read")
    assert REAPER.wait(10)
    segments = list(tmp_path.rglob("*.seg"))
    assert 1 <= len(segments) <= 16, segments  # the deleted ones are gone from the disk, not only from the log
    reader.close()
