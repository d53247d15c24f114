"""The job side of progress reports: phases from the buffer's acks, signed bodies, retries, the environment."""

from __future__ import annotations

import json
from typing import Any

from photonstream import reporting
from photonstream.frames import EndMessage
from photonstream.pipeline import RunStats

URL = "https://api.example:8443/v1/internal/streams/abc/report"


class Capture:
    def __init__(self, fail_first: int = 0) -> None:
        self.sent: list[tuple[dict[str, Any], dict[str, str], bytes]] = []
        self.fail_first = fail_first

    def __call__(self, body: bytes, headers: dict[str, str]) -> None:
        if self.fail_first:
            self.fail_first -= 1
            raise OSError("connection refused")
        self.sent.append((json.loads(body), headers, body))


def new_reporter(sender: Capture) -> reporting.Reporter:
    hub = reporting.FlowHub()  # what this process's buffer handlers would tell
    return reporting.Reporter(URL, "secret", sender=sender, interval_s=3600, hub=hub)  # flushed by hand below


def stats(read: int, sent: int) -> RunStats:
    run = RunStats(events_sent=sent, messages_sent=sent + 1, bytes_sent=100 * sent, expected_events=10)
    run.counts["read"] = read
    return run


def test_phases_follow_the_buffers_acks_and_bodies_are_signed() -> None:
    sender = Capture()
    reporter = new_reporter(sender)
    reporter.hub.producer_opened()  # as the buffer handler does: sent is not stored
    try:
        reporter(stats(4, 4))
        reporter.hub.acked("exp/1/abc", 1, 50, 0)  # the start message stored: no data yet
        assert reporter.flush()
        reporter.hub.acked("exp/1/abc", 4, 400, 4)
        assert reporter.flush()
        reporter.hub.ended("exp/1/abc", EndMessage("abc", events_sent=4, counts={"read": 4}))
        assert reporter.flush()
    finally:
        reporter.hub.producer_closed()
        reporter.close()
    phases = [body["phase"] for body, _, _ in sender.sent]
    assert phases == ["starting", "streaming", "ended"]
    last, headers, raw = sender.sent[-1]
    assert last["address"] == "exp/1/abc" and last["data_acked"] == 4 and last["events_read"] == 4
    assert last["end"] == {"reason": "completed", "error": "", "events_sent": 4, "counts": {"read": 4}}
    timestamp = headers[reporting.TIMESTAMP_HEADER]
    expected = reporting.signature("secret", timestamp, "/v1/internal/streams/abc/report", raw)
    assert headers[reporting.SIGNATURE_HEADER] == expected
    seqs = [body["seq"] for body, _, _ in sender.sent]
    assert seqs == sorted(set(seqs))  # strictly increasing: the API refuses anything else


def test_a_failed_send_is_retried_with_the_newest_figures() -> None:
    sender = Capture(fail_first=1)
    reporter = new_reporter(sender)
    try:
        reporter(stats(2, 2))
        assert not reporter.flush() and reporter.failures == 1 and "refused" in reporter.last_error
        reporter(stats(3, 3))
        assert reporter.flush()
    finally:
        reporter.close()
    assert [body["events_read"] for body, _, _ in sender.sent] == [3]


def test_a_run_without_the_buffer_handler_streams_once_it_sent_an_event() -> None:
    sender = Capture()
    reporter = new_reporter(sender)
    try:
        reporter(stats(0, 0))
        reporter.flush()
        reporter(stats(1, 1))
        reporter.flush()
    finally:
        reporter.close()
    assert [body["phase"] for body, _, _ in sender.sent] == ["starting", "streaming"]


def test_reporter_from_env_only_inside_a_launched_job() -> None:
    assert reporting.reporter_from_env({}) is None
    assert reporting.reporter_from_env({reporting.URL_ENV: URL}) is None  # no secret: no reports
    reporter = reporting.reporter_from_env({reporting.URL_ENV: URL, reporting.SECRET_ENV: "s"})
    assert reporter is not None and reporter.path == "/v1/internal/streams/abc/report"
    reporter._send = Capture()  # type: ignore[method-assign]
    reporter.close()
    calls: list[str] = []
    both = reporting.chain(lambda s: calls.append("a"), None, lambda s: calls.append("b"))
    assert both is not None
    both(stats(1, 1))
    assert calls == ["a", "b"] and reporting.chain(None) is None
