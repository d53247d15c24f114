"""Per-hop metrics: histograms and their quantiles, the text format (prometheus-client), a pipeline rank's counters,
consumers' figures summed per group, and the buffer's accounting (in = out + skipped + held) with redelivery and a
skipping policy on a real buffer."""

from __future__ import annotations

import gc
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.client.subscription import SubscriptionStats
from photonstream.config.pipeline import validate_pipeline
from photonstream.metrics import (
    LatencyHistogram,
    PipelineMetrics,
    group_accounting,
    histogram_family,
    registry_of,
    serve,
    track_subscription,
    value_family,
)
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
    latency = LatencyHistogram(buckets=[0.1, 1.0])
    latency.observe(0.05)
    latency.observe(5.0)
    registry = registry_of(
        [
            value_family("counter", "demo_sent", "messages sent", ["stream"], [(('a"b',), 2)]),
            value_family("gauge", "demo_lag", "lag", ["group"], [(("g",), 7)]),
            value_family("gauge", "demo_empty", "no samples: left out", ["group"], []),
            histogram_family("demo_seconds", "latency", ["group"], [(("g",), latency)]),
        ]
    )
    text = generate_latest(registry).decode()
    assert "# HELP demo_sent_total messages sent\n# TYPE demo_sent_total counter\n" in text
    assert 'demo_sent_total{stream="a\\"b"} 2.0\n' in text
    assert 'demo_lag{group="g"} 7.0\n' in text and "demo_empty" not in text and "_created" not in text
    buckets = re.findall(r'demo_seconds_bucket\{group="g",le="([^"]+)"\} (\S+)', text)
    assert buckets == [("0.1", "1.0"), ("1.0", "1.0"), ("+Inf", "2.0")]
    assert 'demo_seconds_count{group="g"} 2.0\n' in text and 'demo_seconds_sum{group="g"} 5.05\n' in text


@dataclass
class Subscribed:
    """What ``track_subscription`` reads of a subscription: its address, group and stats."""

    stream: str
    group: str
    stats: SubscriptionStats = field(default_factory=SubscriptionStats)


def values_of(text: str, **labels: str) -> dict[str, float]:
    """The samples with exactly these labels (in any order), by name (a bucket's name ends with its ``le``)."""
    out = {}
    for name, pairs, value in re.findall(r"^(\w+)\{([^}]*)\} (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', pairs))
        le = found.pop("le", None)
        if found == labels:
            out[name if le is None else f"{name}:{le}"] = float(value)
    return out


def consumer_values(registry: CollectorRegistry) -> dict[str, float]:
    return values_of(generate_latest(registry).decode(), stream="s1", experiment="exp", run="2", group="work")


def test_consumers_of_one_group_sum_up_and_counters_never_go_down() -> None:
    registry = CollectorRegistry()
    first, second = Subscribed("exp/2/s1", "work"), Subscribed("exp/2/s1", "work")
    assert track_subscription(first, registry) == {"stream": "s1", "experiment": "exp", "run": "2", "group": "work"}
    track_subscription(second, registry)
    first.stats.yielded, first.stats.lag = 5, 3
    first.stats.latency.observe(0.002)
    second.stats.yielded, second.stats.lag = 2, 1
    second.stats.latency.observe(0.2)
    values = consumer_values(registry)
    assert values["photonstream_consumer_messages_total"] == 7 and values["photonstream_consumer_lag"] == 1
    assert values["photonstream_consumer_latency_seconds_count"] == 2
    assert values["photonstream_consumer_latency_seconds_sum"] == pytest.approx(0.202)
    first.stats.yielded += 1
    first.stats.latency.observe(0.002)
    del second  # gone: what it had counted stays
    gc.collect()
    values = consumer_values(registry)
    assert values["photonstream_consumer_messages_total"] == 8 and values["photonstream_consumer_lag"] == 3
    assert values["photonstream_consumer_latency_seconds_count"] == 3
    assert values["photonstream_consumer_latency_seconds_bucket:+Inf"] == 3
    assert values["photonstream_consumer_latency_seconds_bucket:0.0025"] == 2
    text = generate_latest(registry).decode()
    assert "# TYPE photonstream_consumer_lag gauge\n" in text
    assert "# TYPE photonstream_consumer_messages_total counter\n" in text


def test_pipeline_rank_counters_match_its_run(service: BufferService) -> None:
    config = validate_pipeline({
        "stream": {"experiment": "exp1", "run": 4, "stream_id": "metrics-test"},
        "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": [64, 64], "events": 12,
                   "hit_fraction": 0.5, "spot_photons": 1000.0, "seed": 3},
        "steps": [{"type": "hitfinder", "algorithm": "numpy", "min_peaks": 2}, {"type": "filter", "drop_misses": True}],
        "handlers": [{"type": "buffer", "address": service.endpoint}],
    })  # fmt: skip
    registry = CollectorRegistry()
    pipeline = Pipeline(config, Shard(rank=1, size=2))
    pipeline.metrics = PipelineMetrics(pipeline, registry)
    pipeline.run()
    server = serve(0, registry=registry)
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{server.server_address[1]}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    values = values_of(text, stream="metrics-test", experiment="exp1", run="4", rank="1")
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
