"""State and metrics: the stats JSON, Prometheus text and HTTP scrape, and the buffer/consume commands."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from typer.testing import CliRunner

from photonstream.buffer import BufferService
from photonstream.buffer.cli import buffer_app, consume_app
from photonstream.buffer.metrics import render, serve_metrics
from photonstream.client import subscribe
from tests.buffer.support import Producer, WireConsumer, free_port, group_state, produce, remote_stats, wait_until

STREAM = "exp/1/det"


def test_stats_report_in_out_lag_fill_and_losses(make_service: Any) -> None:
    service = make_service(memory_per_stream=1 << 20)
    produce(service.endpoint, STREAM, 25)
    list(subscribe(service.endpoint, STREAM, group="all", timeout_s=10))
    list(subscribe(service.endpoint, STREAM, group="mon", policy="latest", timeout_s=10))
    stats = remote_stats(service.endpoint)
    stream = stats["streams"][STREAM]
    assert stream["messages_in"] == 27 and stream["head"] == 25 and stream["ended"]
    assert stream["bytes_in"] > 0 and 0 < stream["memory_fill"] < 1
    assert stream["groups"]["all"]["delivered"] == 25 and stream["groups"]["all"]["lag"] == 0
    assert stream["groups"]["all"]["bytes_out"] == stream["memory_bytes"]
    assert stream["groups"]["mon"]["skipped"] == 24 and stream["groups"]["mon"]["delivered"] == 1
    assert stats["service"]["memory_bytes"] == stream["memory_bytes"]


def test_prometheus_text_and_http_scrape(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 5)
    list(subscribe(service.endpoint, STREAM, group="all", timeout_s=10))
    text = render(remote_stats(service.endpoint))
    assert 'photonstream_buffer_messages_in_total{stream="exp/1/det"} 7.0' in text
    assert 'photonstream_buffer_group_delivered_total{stream="exp/1/det",group="all",policy="lossless"} 5.0' in text
    assert "# TYPE photonstream_buffer_group_lag gauge" in text
    port = free_port()
    server, _ = serve_metrics(service, port)
    try:
        wait_until(lambda: STREAM in service.stats()["streams"], what="a stats snapshot")
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'photonstream_buffer_bytes_in_total{stream="exp/1/det"}' in body
    finally:
        server.shutdown()


def test_stats_and_consume_commands(service: BufferService) -> None:
    produce(service.endpoint, STREAM, 8)
    runner = CliRunner()
    result = runner.invoke(consume_app, [service.endpoint, STREAM, "--group", "cli", "--json", "--timeout-s", "10"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["messages"] == 8 and summary["ended"] and summary["end_reason"] == "completed"
    result = runner.invoke(buffer_app, ["stats", service.endpoint])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["streams"][STREAM]["groups"]["cli"]["delivered"] == 8
    result = runner.invoke(buffer_app, ["stats", service.endpoint, "--prometheus"])
    assert "photonstream_buffer_group_members" in result.stdout
    bad = runner.invoke(consume_app, [service.endpoint, STREAM, "--policy", "often"])
    assert bad.exit_code == 2 and "policy" in bad.output


def test_held_members_and_rejoins_are_metrics(make_service: Any) -> None:
    service = make_service(member_timeout_s=30.0)  # nothing is released by silence in this test
    producer = Producer(service.endpoint, STREAM)
    producer.start()
    producer.frames(4)
    first = WireConsumer(service.endpoint)
    epoch = first.subscribe("session-1", credit=8)["e"]
    assert first.offsets(4) == [0, 1, 2, 3]
    first.cut()

    def held() -> bool:  # it has credit left: new frames go to it until a send fails and the buffer sets it aside
        producer.frames(1)
        return group_state(service.endpoint, "workers").get("held_members") == 1

    wait_until(held, what="the buffer to hold the gone member")
    labels = '{stream="exp/1/det",group="workers",policy="lossless"}'
    text = render(remote_stats(service.endpoint))
    assert "# TYPE photonstream_buffer_group_held_members gauge" in text
    assert f"photonstream_buffer_group_held_members{labels} 1.0\n" in text
    assert f"photonstream_buffer_group_rejoins_total{labels} 0.0\n" in text
    again = WireConsumer(service.endpoint)
    again.subscribe("session-1", credit=8, e=epoch, a=[0, 1])
    assert again.offsets(2) == [2, 3]  # its own frames, taken back
    text = render(remote_stats(service.endpoint))
    assert f"photonstream_buffer_group_held_members{labels} 0.0\n" in text
    assert f"photonstream_buffer_group_rejoins_total{labels} 1.0\n" in text
    another = WireConsumer(service.endpoint)  # the same member id from another session takes nothing back
    another.subscribe("session-2", credit=1)
    assert f"photonstream_buffer_group_rejoins_total{labels} 1.0\n" in render(remote_stats(service.endpoint))
    for consumer in (again, another):
        consumer.cut()
    producer.close()
