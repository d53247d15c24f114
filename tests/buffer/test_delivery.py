"""Delivery semantics of the buffer: broadcast, work-sharing, policies, replay, late join, end of run, credit."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.errors import ConfigError
from photonstream.frames import CalibrationMessage, EndMessage, Frame, StartMessage
from tests.buffer.support import Producer, events_of, group_state, produce, stream_state, wait_until

STREAM = "exp/1/det"


def read_all(endpoint: str, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("timeout_s", 10)
    return list(subscribe(endpoint, STREAM, **kwargs))


def test_broadcast_every_group_gets_every_message(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 40)
    first = read_all(service.endpoint, group="a")
    second = read_all(service.endpoint, group="b")
    for messages in (first, second):
        assert isinstance(messages[0], StartMessage)
        assert isinstance(messages[-1], EndMessage)
        assert events_of(messages) == list(range(40))


def test_work_sharing_members_split_without_overlap_or_gap(service: BufferService) -> None:
    results: dict[str, list[int]] = {}
    subs = {name: subscribe(service.endpoint, STREAM, group="workers", credit=2, timeout_s=10) for name in "ab"}

    def consume(name: str) -> None:
        results[name] = events_of(list(subs[name]))

    threads = [threading.Thread(target=consume, args=(name,)) for name in subs]
    for t in threads:
        t.start()
    wait_until(lambda: group_state(service.endpoint, "workers").get("members") == 2)
    produce(service.endpoint, STREAM, 200)
    for t in threads:
        t.join(20)
    a, b = results["a"], results["b"]
    assert a and b, "both members got work"
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(200))


def test_latest_gets_the_newest_and_counts_what_it_skipped(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 30)
    sub = subscribe(service.endpoint, STREAM, group="monitor", policy="latest", timeout_s=10)
    messages = list(sub)
    assert events_of(messages) == [29]
    assert sub.stats.skipped == 29
    assert group_state(service.endpoint, "monitor")["skipped"] == 29


def test_decimate_gets_every_nth(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 23)
    sub = subscribe(service.endpoint, STREAM, group="thin", policy="decimate:5", timeout_s=10)
    assert events_of(list(sub)) == [0, 5, 10, 15, 20]
    assert sub.stats.skipped == 23 - 5
    assert group_state(service.endpoint, "thin")["skipped"] == 18


def test_sample_limits_the_rate_and_reports_the_rest(service: BufferService) -> None:
    rate = 5.0
    sub = subscribe(service.endpoint, STREAM, group="sampler", policy=f"sample:{rate}", timeout_s=10)
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.extend(events_of(list(sub))))
    consumer.start()
    wait_until(lambda: group_state(service.endpoint, "sampler").get("members") == 1)
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    began = time.monotonic()
    for _ in range(40):
        producer.frames(1)
        time.sleep(0.01)
    producer.end()
    producer.close()
    consumer.join(10)
    elapsed = time.monotonic() - began
    assert 1 <= len(got) <= rate * elapsed + 2
    assert got == sorted(got)
    assert len(got) + sub.stats.skipped == 40


def test_policies_do_not_hold_back_a_lossless_group(make_service: Any) -> None:
    service = make_service(memory_per_stream=64 * 1024)  # memory only: nothing to spill to
    producer = Producer(service.endpoint, STREAM, send_timeout_s=10)
    producer.start()
    stuck = subscribe(service.endpoint, STREAM, group="monitor", policy="latest", credit=1)
    assert isinstance(next(stuck), StartMessage)  # then never asks again
    reader = subscribe(service.endpoint, STREAM, group="archive", timeout_s=10)
    got: list[int] = []
    consumer = threading.Thread(target=lambda: got.extend(events_of(list(reader))))
    consumer.start()
    wait_until(lambda: group_state(service.endpoint, "archive").get("members") == 1)
    producer.frames(300, shape=(32, 32))  # 2 KiB each: ~10x the memory budget
    producer.end()
    producer.close()
    consumer.join(20)
    assert got == list(range(300))
    monitor = group_state(service.endpoint, "monitor")
    assert monitor["delivered"] <= 1 and monitor["skipped"] + monitor["expired"] >= 1
    stuck.close()


def test_replay_from_an_offset(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 20)
    assert events_of(read_all(service.endpoint, group="replay", start="offset:12")) == list(range(12, 20))
    assert events_of(read_all(service.endpoint, group="replay2", start=15)) == list(range(15, 20))
    assert events_of(read_all(service.endpoint, group="newest", start="newest")) == [19]


def test_replay_from_a_time(service: BufferService) -> None:
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(5)
    wait_until(lambda: stream_state(service.endpoint).get("head") == 5)
    time.sleep(0.05)
    cut = time.time()
    producer.frames(5)
    producer.end()
    producer.close()
    assert events_of(read_all(service.endpoint, group="since", start=f"time:{cut}")) == list(range(5, 10))


def test_a_late_joiner_gets_the_start_message_first(service: BufferService) -> None:
    producer = Producer(service.endpoint, STREAM)
    sent = producer.start()
    producer.frames(10)
    early = subscribe(service.endpoint, STREAM, group="g", credit=4, timeout_s=10)
    assert isinstance(next(early), StartMessage)
    next(early)
    late = subscribe(service.endpoint, STREAM, group="g", credit=4, timeout_s=10)  # joins mid-stream
    first = next(late)
    assert isinstance(first, StartMessage)
    assert first.geometry == sent.geometry and first.detector == "epix10k2m"
    assert (first.arrays["mask"] == sent.arrays["mask"]).all()
    producer.end()
    producer.close()
    rest: dict[str, list[int]] = {}
    threads = [threading.Thread(target=lambda n=n, s=s: rest.setdefault(n, events_of(list(s))))
               for n, s in (("early", early), ("late", late))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(rest["early"] + rest["late"]) == list(range(1, 10))


def test_calibration_reaches_every_member_in_order(service: BufferService) -> None:
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(3)
    producer.calibration("ped-2")
    producer.frames(3)
    producer.end()
    producer.close()
    messages = read_all(service.endpoint, group="cal")
    kinds = [type(m).__name__ for m in messages]
    assert kinds == ["StartMessage", *["Frame"] * 3, "CalibrationMessage", *["Frame"] * 3, "EndMessage"]
    late = read_all(service.endpoint, group="late", start="offset:4")
    assert isinstance(late[1], CalibrationMessage) and late[1].calibration.identifier == "ped-2"


def test_end_of_run_ends_every_iterator(service: BufferService) -> None:
    subs = [
        subscribe(service.endpoint, STREAM, group="share", timeout_s=10),
        subscribe(service.endpoint, STREAM, group="share", timeout_s=10),
        subscribe(service.endpoint, STREAM, group="all", timeout_s=10),
        subscribe(service.endpoint, STREAM, group="mon", policy="latest", timeout_s=10),
        subscribe(service.endpoint, STREAM, group="dec", policy="decimate:3", timeout_s=10),
    ]
    last: dict[int, Any] = {}

    def drain(i: int) -> None:
        for message in subs[i]:
            last[i] = message

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(len(subs))]
    for t in threads:
        t.start()
    produce(service.endpoint, STREAM, 50)
    for t in threads:
        t.join(15)
    assert not any(t.is_alive() for t in threads)
    assert all(isinstance(last[i], EndMessage) for i in range(len(subs)))
    assert all(s.end is not None and s.end.events_sent == 50 for s in subs)


def test_credit_bounds_what_is_sent_ahead(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 100)
    sub = subscribe(service.endpoint, STREAM, group="slow", credit=3, timeout_s=10)
    assert isinstance(next(sub), StartMessage)
    time.sleep(0.3)  # the buffer has had time to push more, if it would
    group = group_state(service.endpoint, "slow")
    assert group["delivered"] == 3 and group["inflight"] == 3
    assert sub.stats.received <= 3
    assert events_of(list(sub)) == list(range(100))


def test_unacked_messages_are_redelivered_and_duplicates_dropped(make_service: Any) -> None:
    service = make_service(ack_timeout_s=0.2)
    produce(service.endpoint, STREAM, 12)
    sub = subscribe(service.endpoint, STREAM, group="g", credit=4, timeout_s=10)
    got = [next(sub), next(sub)]
    time.sleep(0.6)  # hold message 0 and the prefetched ones past the ack timeout
    got += list(sub)
    assert events_of(got) == list(range(12))
    assert group_state(service.endpoint, "g")["redelivered"] >= 1
    assert sub.stats.duplicates >= 1


def test_group_policy_is_fixed_and_bad_requests_are_refused(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 2)
    list(subscribe(service.endpoint, STREAM, group="g", timeout_s=5))
    with pytest.raises(ConfigError, match="already uses policy lossless"):
        list(subscribe(service.endpoint, STREAM, group="g", policy="latest", timeout_s=5))
    with pytest.raises(ConfigError, match="policy"):
        subscribe(service.endpoint, STREAM, policy="sometimes")
    with pytest.raises(ConfigError, match="start"):
        subscribe(service.endpoint, STREAM, start="yesterday")
    with pytest.raises(ConfigError, match="experiment/run/stream-id"):
        list(subscribe(service.endpoint, "not-an-address", timeout_s=5))


def test_a_consumer_may_subscribe_before_the_producer_starts(service: BufferService) -> None:
    sub = subscribe(service.endpoint, STREAM, group="early", timeout_s=10)
    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.extend(sub))
    consumer.start()
    wait_until(lambda: stream_state(service.endpoint))
    produce(service.endpoint, STREAM, 5)
    consumer.join(10)
    assert isinstance(got[0], StartMessage) and events_of(got) == list(range(5))
    assert all(isinstance(m, Frame) for m in got[1:-1])
