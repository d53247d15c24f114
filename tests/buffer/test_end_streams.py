"""Ending a stream whose job or producer died (``end_streams`` in process, ``FIN`` from the API's admin key).

Consumers of every group get what is already stored, then an end message with reason ``failed`` / ``cancelled``
and the one-line reason; later producer data is refused; ending again, or a stream its producer already ended,
changes nothing; a stream that never opened is ended too, so subscribers waiting for its start are not left hanging.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from photonstream.buffer import BufferService
from photonstream.buffer import protocol as P
from photonstream.buffer.credentials import Credentials, ensure_keypair
from photonstream.client import subscribe
from photonstream.errors import ConfigError, HandlerError
from photonstream.frames import EndMessage, Frame, StartMessage
from tests.buffer.support import Producer, events_of, produce, start_service, wait_until
from tests.buffer.test_security import StreamKeys, request, secure_producer

STREAM = "exp/1/det"
WHY = "job 42 killed by signal SIGKILL"


def test_a_lossless_group_gets_every_stored_frame_then_the_failed_end(service: BufferService) -> None:
    producer = Producer(service.endpoint, STREAM, send_timeout_s=5)
    producer.start()
    producer.frames(7)
    workers = subscribe(service.endpoint, STREAM, group="workers", credit=2, timeout_s=10)
    first = [next(workers), next(workers)]  # the start and frame 0: five stored frames are not yet sent
    assert isinstance(first[0], StartMessage) and events_of(first) == [0]

    assert service.end_streams([STREAM], "failed", WHY) == 1
    rest = list(workers)
    monitor = list(subscribe(service.endpoint, STREAM, group="monitor", policy="latest", timeout_s=10))

    assert events_of(first + rest) == list(range(7))  # nothing stored is lost, nothing repeated
    end = rest[-1]
    assert isinstance(end, EndMessage) and (end.reason, end.error) == ("failed", WHY)
    assert workers.end is end and end.stream_id == "det"
    assert isinstance(monitor[-1], EndMessage) and monitor[-1].reason == "failed"  # every group gets it
    with pytest.raises(HandlerError, match=r"already ended \(failed: job 42 killed"):  # later data is refused
        producer.frames(1)
        producer.close()
    stats = service.stats_now()["streams"][STREAM]
    assert stats["ended"] and stats["ended_by"] == ["failed", WHY] and stats["head"] == 7


def test_ending_is_idempotent_and_leaves_a_completed_stream_alone(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 3)  # its producer ended it: completed
    assert service.end_streams([STREAM], "failed", WHY) == 0
    got = list(subscribe(service.endpoint, STREAM, group="late", timeout_s=10))
    assert events_of(got) == [0, 1, 2] and isinstance(got[-1], EndMessage) and got[-1].reason == "completed"

    other = "exp/2/det"
    produce(service.endpoint, other, 2, end=False)
    assert service.end_streams([other], "cancelled", "cancelled by alice") == 1
    assert service.end_streams([other], "failed", "a second word changes nothing") == 0
    got = list(subscribe(service.endpoint, other, group="g", timeout_s=10))
    assert events_of(got) == [0, 1] and (got[-1].reason, got[-1].error) == ("cancelled", "cancelled by alice")


def test_a_stream_that_never_opened_ends_its_waiting_subscribers(service: BufferService) -> None:
    seen: list[Any] = []
    sub = subscribe(service.endpoint, STREAM, group="workers", timeout_s=10)
    reader = threading.Thread(target=lambda: seen.extend(sub), daemon=True)
    reader.start()
    wait_until(lambda: service.stats_now()["service"]["members"] == 1, what="the subscriber to join")

    assert service.end_streams([STREAM], "failed", "job submission failed: sbatch not found") == 1
    reader.join(10)
    assert not reader.is_alive()
    assert len(seen) == 1 and isinstance(seen[0], EndMessage)  # no start message: only the end
    why = "job submission failed: sbatch not found"
    assert (seen[0].reason, seen[0].error) == ("failed", why)
    raw = list(subscribe(service.endpoint, STREAM, group="later", decode=False, timeout_s=10))  # a later one too
    assert [(d.kind, d.reason, d.message) for d in raw] == [("end", "failed", why)]
    with pytest.raises(HandlerError, match="already ended"):  # a job that starts late cannot reopen it
        produce(service.endpoint, STREAM, 1, send_timeout_s=5)


def test_bad_requests_are_refused_with_the_field(service: BufferService) -> None:
    with pytest.raises(ConfigError, match="reason 'completed' is not one of failed, cancelled"):
        service.end_streams([STREAM], "completed", "")
    with pytest.raises(ConfigError, match="is not experiment/run/stream-id"):
        service.end_streams(["../etc"], "failed", "")
    assert STREAM not in service.stats_now()["streams"]


def test_a_durable_stream_stays_ended_after_a_restart(tmp_path: Path) -> None:
    first = start_service(data_dir=tmp_path)
    try:
        produce(first.endpoint, STREAM, 4, end=False, durable=True)
        assert first.end_streams([STREAM], "failed", "multi-line\nreason   squeezed") == 1
    finally:
        first.stop()
    again = start_service(data_dir=tmp_path)
    try:
        got = list(subscribe(again.endpoint, STREAM, group="g", timeout_s=10))
        assert events_of(got) == [0, 1, 2, 3]
        assert (got[-1].reason, got[-1].error) == ("failed", "multi-line reason squeezed")
        assert again.end_streams([STREAM], "failed", WHY) == 0
    finally:
        again.stop()


def test_fin_over_the_wire_needs_an_admin_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    admin_public, admin_secret = ensure_keypair(keys / "api", "api")
    (keys / "admins").mkdir(parents=True)
    (keys / "admins" / "api.key").write_text((keys / "api" / "api.key").read_text())
    service = start_service(security="curve", keys_dir=keys)
    try:
        a = StreamKeys("exp/1/aaaa")
        service.access.register([a.entry()])
        producer = secure_producer(service, a)
        producer.start()
        producer.frames(3)
        assert service.public_key is not None
        admin = Credentials.curve(service.public_key, admin_public, admin_secret)
        fin = P.envelope(P.FIN, {"s": [a.address], "r": "failed", "m": WHY})

        for stranger in (a.consumer_curve(service), a.producer_curve(service)):  # the stream's own keys: not admins
            command, header = request(service.endpoint, stranger, fin)
            assert (command, header["c"]) == (P.ERR, "forbidden") and "only the buffer's admins" in header["m"]
        assert not service.stats_now()["streams"][a.address]["ended"]
        command, header = request(service.endpoint, admin, P.envelope(P.FIN, {"s": [a.address], "r": "done"}))
        assert (command, header["c"]) == (P.ERR, "bad-request") and "reason 'done'" in header["m"]

        assert request(service.endpoint, admin, fin) == (P.FIN, {"ok": True, "n": 1})
        assert request(service.endpoint, admin, fin) == (P.FIN, {"ok": True, "n": 0})  # idempotent
        got = list(subscribe(service.endpoint, a.address, group="g", timeout_s=10,
                             credentials=a.consumer_curve(service)))  # fmt: skip
        assert events_of(got) == [0, 1, 2] and (got[-1].reason, got[-1].error) == ("failed", WHY)
        assert not any(isinstance(m, Frame) and m.event >= 3 for m in got)
    finally:
        service.stop()


def test_fin_is_a_request_of_the_loop_while_it_serves(service: BufferService) -> None:
    """From another thread the call waits for the loop; a stopped service answers directly."""
    assert service.end_streams(["exp/9/det"], "cancelled", "x") == 1
    service.stop()
    assert service.end_streams(["exp/10/det"], "cancelled", "x") == 1
