"""Per-hop metrics: histograms and their quantiles, the text format, a pipeline rank's counters, and the buffer's
accounting (in = out + skipped + held) with redelivery and a skipping policy on a real buffer."""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator

import pytest

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.config.pipeline import validate_pipeline
from photonstream.metrics import LatencyHistogram, PipelineMetrics, Registry, group_accounting, serve
from photonstream.pipeline import Pipeline
from photonstream.sources.base import Shard
from tests.buffer.support import produce, remote_stats, start_service


@pytest.fixture()
def service() -> Iterator[BufferService]:
    buffer = start_service()
    yield buffer
    buffer.stop()


def test_histogram_quantiles_interpolate_inside_buckets() -> None:
    histogram = LatencyHistogram()
    for _ in range(90):
        histogram.observe(0.0008)
    for _ in range(10):
        histogram.observe(0.8)
    assert histogram.count == 100 and histogram.sum == pytest.approx(90 * 0.0008 + 10 * 0.8)
    assert 0.0005 < histogram.quantile(0.5) <= 0.001
    assert 0.5 < histogram.quantile(0.99) <= 1.0
    assert histogram.observe_since(0) is None and histogram.count == 100  # no creation time: not counted
    assert LatencyHistogram().quantile(0.5) is None
    histogram.observe(1e6)  # beyond the last bucket: counted in +Inf
    assert histogram.cumulative()[-1] == (float("inf"), 101)


def test_text_format_counters_gauges_histograms() -> None:
    registry = Registry()
    sent = registry.counter("demo_sent", "messages sent", ["stream"])
    sent.labels(stream='a"b').inc(2)
    registry.gauge("demo_lag", "lag", ["group"]).labels(group="g").set(7)
    latency = registry.histogram("demo_seconds", "latency", ["group"], buckets=[0.1, 1.0])
    latency.labels(group="g").observe(0.05)
    latency.labels(group="g").observe(5.0)
    text = registry.render()
    assert "# TYPE demo_sent_total counter\n" in text and 'demo_sent_total{stream="a\\"b"} 2.0\n' in text
    assert 'demo_lag{group="g"} 7.0\n' in text
    buckets = re.findall(r'demo_seconds_bucket\{group="g",le="([^"]+)"\} (\d+)', text)
    assert buckets == [("0.1", "1"), ("1.0", "1"), ("+Inf", "2")]
    assert 'demo_seconds_count{group="g"} 2\n' in text
    with pytest.raises(ValueError, match="labels must be"):
        sent.labels(group="x")
    with pytest.raises(ValueError, match="exists as a counter"):
        registry.gauge("demo_sent", "again", ["stream"])


def test_pipeline_rank_counters_match_its_run(service: BufferService) -> None:
    config = validate_pipeline({
        "stream": {"experiment": "exp1", "run": 4, "stream_id": "metrics-test"},
        "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "events": 12,
                   "hit_fraction": 0.5, "spot_photons": 1000.0, "seed": 3},
        "steps": [{"type": "hitfinder", "algorithm": "numpy", "min_peaks": 2}, {"type": "filter", "drop_misses": True}],
        "handlers": [{"type": "buffer", "address": service.endpoint}],
    })  # fmt: skip
    registry = Registry()
    pipeline = Pipeline(config, Shard(rank=1, size=2))
    pipeline.metrics = PipelineMetrics(pipeline, registry)
    pipeline.run()
    server = serve(0, registry=registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    labels = 'stream="metrics-test",experiment="exp1",run="4",rank="1"'
    values = {m[0]: float(m[1]) for m in re.findall(r"^(\w+)\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)}
    stats = pipeline.stats
    assert values["photonstream_pipeline_events_read_total"] == stats.counts["read"] == 6  # rank 1 of 2: odd events
    assert values["photonstream_pipeline_events_sent_total"] == stats.events_sent
    assert values["photonstream_pipeline_events_dropped_total"] == 6 - stats.events_sent == stats.counts["miss"] > 0
    assert values["photonstream_pipeline_messages_out_total"] == stats.messages_sent == stats.events_sent + 2
    assert values["photonstream_pipeline_bytes_out_total"] == stats.bytes_sent > 0
    assert values["photonstream_pipeline_latency_seconds_count"] == stats.messages_sent
    assert values["photonstream_pipeline_encode_seconds_count"] == stats.messages_sent


def test_buffer_accounting_adds_up_with_redelivery_and_skipping(service: BufferService) -> None:
    stream = "exp/1/acct"
    quitter = subscribe(service.endpoint, stream, group="work", credit=5, timeout_s=10)
    latest = subscribe(service.endpoint, stream, group="peek", policy="latest", credit=1, timeout_s=10)
    produce(service.endpoint, stream, 25)
    next(quitter)  # the start message
    next(quitter)  # one event; four more are in flight to this member
    quitter.close()  # leaves: what it held goes back to the group
    stayer = subscribe(service.endpoint, stream, group="work", timeout_s=10)
    assert len([m for m in stayer if getattr(m, "event", None) is not None]) >= 24
    for _ in zip(range(3), latest, strict=False):
        pass
    latest.close()
    stats = remote_stats(service.endpoint)["streams"][stream]
    work = group_accounting(stats, stats["groups"]["work"])
    peek = group_accounting(stats, stats["groups"]["peek"])
    assert work["redelivered"] > 0 and work["skipped"] == 0
    assert peek["skipped"] > 0
    for figures in (work, peek):
        assert figures["in"] == 25 == figures["out"] + figures["skipped"] + figures["held"], figures
