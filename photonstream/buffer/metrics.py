"""Prometheus metrics of the buffer, built from its stats JSON (``BufferService.stats()``).

``render(stats)`` gives the text exposition format (``photonstream buffer stats --prometheus``);
``serve_metrics(service, port)`` serves it over HTTP with prometheus-client for scraping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from photonstream.errors import MissingDependencyError

# (metric name, help, type, stats key) per stream and per group
STREAM_METRICS = [
    ("photonstream_buffer_messages_in", "Messages received from the producer", "counter", "messages_in"),
    ("photonstream_buffer_bytes_in", "Payload bytes received from the producer", "counter", "bytes_in"),
    ("photonstream_buffer_memory_bytes", "Payload bytes held in memory", "gauge", "memory_bytes"),
    ("photonstream_buffer_memory_fill", "Memory held / the stream's memory budget", "gauge", "memory_fill"),
    ("photonstream_buffer_disk_bytes", "Bytes held in segment files", "gauge", "disk_bytes"),
    ("photonstream_buffer_head_offset", "Offset the next message will get", "gauge", "head"),
    ("photonstream_buffer_first_offset", "Oldest offset still held", "gauge", "first"),
    ("photonstream_buffer_producer_blocked", "1 while the producer is held back by full budgets", "gauge", "blocked"),
    ("photonstream_buffer_producer_errors", "Producer messages refused", "counter", "producer_errors"),
]
GROUP_METRICS = [
    ("photonstream_buffer_group_delivered", "Messages sent to the group's members", "counter", "delivered"),
    ("photonstream_buffer_group_bytes_out", "Payload bytes sent to the group's members", "counter", "bytes_out"),
    ("photonstream_buffer_group_lag", "Messages in the log the group has not finished", "gauge", "lag"),
    ("photonstream_buffer_group_skipped", "Messages the group's policy skipped", "counter", "skipped"),
    ("photonstream_buffer_group_expired", "Messages evicted before the group got them", "counter", "expired"),
    (
        "photonstream_buffer_group_redelivered",
        "Messages sent again (ack timeout, member gone)",
        "counter",
        "redelivered",
    ),
    ("photonstream_buffer_group_inflight", "Messages sent and not yet acked", "gauge", "inflight"),
    ("photonstream_buffer_group_members", "Members of the group", "gauge", "members"),
    (
        "photonstream_buffer_group_held_members",
        "Members whose connection is gone, keeping their in-flight messages until the member timeout",
        "gauge",
        "held_members",
    ),
    (
        "photonstream_buffer_group_rejoins",
        "Rejoins that took back a held member and its in-flight messages",
        "counter",
        "rejoins",
    ),
]
SERVICE_METRICS = [
    ("photonstream_buffer_total_memory_bytes", "Payload bytes in memory, all streams", "gauge", "memory_bytes"),
    ("photonstream_buffer_total_disk_bytes", "Bytes on disk, all streams", "gauge", "disk_bytes"),
    ("photonstream_buffer_uptime_seconds", "Seconds since the service started", "gauge", "uptime_s"),
]


def _number(value: Any) -> float:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, str):
        return 1.0 if value else 0.0
    return float(value or 0)


def samples(stats: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, str], float]]:
    """(name, help, type, labels, value) for every metric in a stats tree."""
    service = stats.get("service", {})
    for name, doc, kind, key in SERVICE_METRICS:
        yield name, doc, kind, {}, _number(service.get(key))
    for address, stream in stats.get("streams", {}).items():
        for name, doc, kind, key in STREAM_METRICS:
            yield name, doc, kind, {"stream": address}, _number(stream.get(key))
        for group_name, group in stream.get("groups", {}).items():
            labels = {"stream": address, "group": group_name, "policy": str(group.get("policy", ""))}
            for name, doc, kind, key in GROUP_METRICS:
                yield name, doc, kind, labels, _number(group.get(key))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(stats: dict[str, Any]) -> str:
    """The Prometheus text exposition of a stats tree (counters get the ``_total`` suffix)."""
    by_name: dict[str, list[str]] = {}
    heads: dict[str, str] = {}
    for name, doc, kind, labels, value in samples(stats):
        full = f"{name}_total" if kind == "counter" else name
        heads.setdefault(name, f"# HELP {full} {doc}\n# TYPE {full} {kind}\n")
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        by_name.setdefault(name, []).append(
            f"{full}{{{label_text}}} {value!r}\n" if label_text else f"{full} {value!r}\n"
        )
    return "".join(heads[n] + "".join(lines) for n, lines in by_name.items())


def collector(get_stats: Callable[[], dict[str, Any]]) -> Any:
    """A prometheus-client collector that reads ``get_stats()`` at each scrape."""
    try:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    except ImportError:
        raise MissingDependencyError.for_package("prometheus-client", "buffer metrics") from None

    class BufferCollector:
        def collect(self) -> Iterator[Any]:
            families: dict[str, Any] = {}
            for name, doc, kind, labels, value in samples(get_stats()):
                family = families.get(name)
                if family is None:
                    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                    family = families[name] = cls(name, doc, labels=list(labels))
                family.add_metric(list(labels.values()), value)
            yield from families.values()

    return BufferCollector()


def serve_metrics(service: Any, port: int, host: str = "127.0.0.1") -> Any:
    """Serve the service's metrics at http://host:port/metrics; returns prometheus-client's server."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise MissingDependencyError.for_package("prometheus-client", "buffer metrics") from None
    registry = CollectorRegistry()
    registry.register(collector(service.stats))
    return start_http_server(port, addr=host, registry=registry)
