"""Metrics of every hop, exported with prometheus-client (collectors that read live stats at scrape time).

    registry = CollectorRegistry()          # or the process's own, ``default_registry()`` (``REGISTRY``)
    PipelineMetrics(pipeline, registry)     # a pipeline rank
    track_subscription(subscription, registry)
    serve(port, registry=registry)          # http://127.0.0.1:port/metrics, ``prometheus_client.start_http_server``

Hops and what they export (labels ``stream``, ``experiment``, ``run`` and ``rank`` or ``group``):

- pipeline ranks (``PipelineMetrics``): messages and bytes out, events read/sent/dropped (read from the runner's
  counters at scrape time) and, per message, the encode time and the creation → handed-to-handlers latency;
  ``photonstream run --metrics-port`` serves them (``serve``);
- consumers (``track_subscription``): a subscription's ``SubscriptionStats`` (delivered, skipped, redelivered,
  lag) and its latency histogram (creation → handed to the application);
- the buffer hop is accounted from the buffer's stats (``group_accounting``): every data message the buffer took
  is, for each group, delivered, skipped (by policy or eviction) or still held: ``in = out + skipped + held``.

Latency is ``now - message.created_ns`` (the pipeline stamps every message when it emits it), so it needs the
hosts' clocks in step (NTP/PTP); a negative difference counts as zero.

prometheus-client is imported only once a registry is made: it loads ``http.server`` and ``ssl`` (~40 ms), which a
``photonstream run`` without ``--metrics-port`` does not pay (tests/test_lazy_imports.py).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import CollectorRegistry

# seconds: sub-millisecond hand-offs up to a minute of backlog
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


class LatencyHistogram:
    """Counts of observations per bucket (upper bounds in seconds, +Inf last), with their sum.

    Why this stays beside prometheus-client: the client's ``SubscriptionStats`` and the dashboard need
    ``quantile()`` (p50/p99 of a live histogram), which prometheus-client does not compute; and it is the pipeline
    hop's per-message histogram because it is cheaper. Measured with 100k calls (2 cores, loaded, load average
    ~3): ``LatencyHistogram.observe`` 0.51 µs, prometheus-client's ``Histogram`` 0.95 µs with the labelled child
    bound once and 3.1 µs as ``Histogram.labels(...).observe()``. A pipeline rank observes twice per message
    (encode time and latency): 1.9 µs with prometheus-client, ~10 % of the ~20 µs hop of a 1 KiB msgpack message
    (0.2 % of a 2 MB HDF5 frame's ~1 ms), against 1.0 µs here, over the 1 % allowed. It is exported as a
    ``HistogramMetricFamily`` (``histogram_family``). Cheap to update from one thread while another reads it (a
    lock around each update and snapshot).
    """

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS_S) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        index = bisect.bisect_left(self.bounds, seconds)
        with self._lock:
            self.counts[index] += 1
            self.sum += seconds

    def observe_since(self, created_ns: int, now_ns: int | None = None) -> float | None:
        """Observe ``now - created_ns``; messages without a creation time (0) are not counted."""
        if created_ns <= 0:
            return None
        seconds = ((now_ns if now_ns is not None else time.time_ns()) - created_ns) / 1e9
        self.observe(seconds)
        return max(0.0, seconds)

    def merge(self, other: LatencyHistogram) -> None:
        if other.bounds != self.bounds:
            raise ValueError("histograms have different buckets")
        self.add(*other.snapshot())

    def add(self, counts: Sequence[int], total: float) -> None:
        """Add per-bucket counts and their sum (e.g. what another histogram gained since it was last read)."""
        with self._lock:
            self.counts = [a + b for a, b in zip(self.counts, counts, strict=True)]
            self.sum += total

    def snapshot(self) -> tuple[list[int], float]:
        with self._lock:
            return list(self.counts), self.sum

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, observations at or below it) per bucket, ending with (+Inf, count)."""
        counts, _ = self.snapshot()
        return list(zip([*self.bounds, math.inf], accumulate(counts), strict=True))

    def quantile(self, q: float) -> float | None:
        """The q-quantile, interpolated linearly inside its bucket (as PromQL's histogram_quantile); None if empty."""
        counts, _ = self.snapshot()
        total = sum(counts)
        if total == 0:
            return None
        rank = q * total
        running = 0
        lower = 0.0
        for i, n in enumerate(counts):
            upper = self.bounds[i] if i < len(self.bounds) else self.bounds[-1]
            if running + n >= rank and n > 0:
                if i == len(self.bounds):  # in +Inf: all we know is that it is above the last bound
                    return self.bounds[-1]
                return lower + (upper - lower) * (rank - running) / n
            running += n
            lower = upper
        return self.bounds[-1]


# --- families and registries -------------------------------------------------------------------------------------

Key = tuple[str, ...]


def histogram_family(
    name: str, help: str, labelnames: Sequence[str], histograms: Iterable[tuple[Key, LatencyHistogram]]
) -> HistogramMetricFamily:
    """A histogram family of ``LatencyHistogram``s (label values → histogram): cumulative buckets, +Inf, sum, count."""
    from prometheus_client.core import HistogramMetricFamily
    from prometheus_client.utils import floatToGoString

    family = HistogramMetricFamily(name, help, labels=list(labelnames))
    for key, histogram in histograms:
        counts, total = histogram.snapshot()  # one snapshot: the count and the sum agree
        bounds = [*histogram.bounds, math.inf]
        buckets = [(floatToGoString(b), float(n)) for b, n in zip(bounds, accumulate(counts), strict=True)]
        family.add_metric(list(key), buckets, total)
    return family


def value_family(
    kind: str, name: str, help: str, labelnames: Sequence[str], values: Iterable[tuple[Key, float]]
) -> Metric:
    """A counter (``name`` is exposed as ``name_total``) or gauge family: (label values, value) pairs."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, help, labels=list(labelnames))
    for key, value in values:
        family.add_metric(list(key), float(value))
    return family


class Families:
    """A collector of families made beforehand (``registry_of``); families without samples are left out."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        yield from (family for family in self.families if family.samples)


def registry_of(families: Iterable[Metric]) -> CollectorRegistry:
    """A fresh registry exposing ``families`` (e.g. one per scrape, built from live figures)."""
    from prometheus_client.registry import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(Families(families))
    return registry


# the pipeline hop: (metric, help, RunStats → value)
PIPELINE_LABELS = ("stream", "experiment", "run", "rank")
PIPELINE_COUNTERS: tuple[tuple[str, str, Any], ...] = (
    ("photonstream_pipeline_messages_out", "Messages handed to the handlers", lambda s: s.messages_sent),
    ("photonstream_pipeline_bytes_out", "Serialized bytes handed to the handlers", lambda s: s.bytes_sent),
    ("photonstream_pipeline_events_read", "Events read from the source", lambda s: s.counts.get("read", 0)),
    ("photonstream_pipeline_events_sent", "Events sent (alone or in batches)", lambda s: s.events_sent),
    ("photonstream_pipeline_events_dropped", "Events read and not sent (filtered)",
     lambda s: max(0, s.counts.get("read", 0) - s.events_sent)),
)  # fmt: skip
ENCODE, LATENCY = "photonstream_pipeline_encode_seconds", "photonstream_pipeline_latency_seconds"

# the consumer hop: (SubscriptionStats attribute, metric, help); lag is a gauge, the others counters
CONSUMER_LABELS = ("stream", "experiment", "run", "group")
CONSUMER_VALUES = (
    ("yielded", "photonstream_consumer_messages", "Data messages handed to the application"),
    ("bytes", "photonstream_consumer_bytes", "Payload bytes handed to the application"),
    ("duplicates", "photonstream_consumer_duplicates", "Redelivered copies dropped"),
    ("skipped", "photonstream_consumer_skipped", "Messages the group's policy skipped"),
    ("redelivered", "photonstream_consumer_redelivered", "Messages the group had redelivered"),
    ("lag", "photonstream_consumer_lag", "Messages in the log after the last one received"),
)
CONSUMER_LATENCY = "photonstream_consumer_latency_seconds"

# every family a HopCollector exposes: name → (kind, help, label names)
HOP_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    **{name: ("counter", help, PIPELINE_LABELS) for name, help, _ in PIPELINE_COUNTERS},
    ENCODE: ("histogram", "Time to serialize one message", PIPELINE_LABELS),
    LATENCY: ("histogram", "Message creation until every handler has it (encode and hand-off)", PIPELINE_LABELS),
    **{name: ("gauge" if attr == "lag" else "counter", help, CONSUMER_LABELS) for attr, name, help in CONSUMER_VALUES},
    CONSUMER_LATENCY: ("histogram", "Message creation until the application has it", CONSUMER_LABELS),
}


class _Tracked:
    """A subscription's stats (weakly) and what it had reported at the last scrape."""

    def __init__(self, key: Key, stats: Any) -> None:
        self.key, self.stats = key, weakref.ref(stats)
        self.last: dict[str, float] = dict.fromkeys((attr for attr, _, _ in CONSUMER_VALUES), 0)
        self.latency: tuple[list[int], float] = ([0] * (len(LATENCY_BUCKETS_S) + 1), 0.0)


class HopCollector:
    """The pipeline ranks and consumers of one registry, read at every scrape (one family per metric name).

    A rank's counters are read from its ``RunStats``; they keep their last value once it is gone. Consumers add
    what each subscription gained since the last scrape, so several subscriptions of one group (same labels) sum
    up and a counter never goes down when one goes away; ``lag`` is the latest value a subscription had.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ranks: list[tuple[Key, weakref.ref[Any]]] = []
        self._subscriptions: list[_Tracked] = []
        self._figures: dict[str, dict[Key, Any]] = {name: {} for name in HOP_FAMILIES}  # values or histograms

    def add_rank(self, key: Key, stats: Any) -> tuple[LatencyHistogram, LatencyHistogram]:
        """Follow a rank's stats; returns its (encode, latency) histograms (shared by ranks with these labels)."""
        with self._lock:
            self._ranks = [(k, ref) for k, ref in self._ranks if ref() is not None]
            self._ranks.append((key, weakref.ref(stats)))
            encode, latency = self._figures[ENCODE], self._figures[LATENCY]
            return encode.setdefault(key, LatencyHistogram()), latency.setdefault(key, LatencyHistogram())

    def add_subscription(self, key: Key, stats: Any) -> None:
        with self._lock:
            self._subscriptions.append(_Tracked(key, stats))

    def _refresh(self) -> None:
        self._ranks = [(key, ref) for key, ref in self._ranks if ref() is not None]
        for key, ref in self._ranks:
            stats = ref()
            for name, _, value in PIPELINE_COUNTERS:
                self._figures[name][key] = float(value(stats))
        self._subscriptions = [tracked for tracked in self._subscriptions if tracked.stats() is not None]
        for tracked in self._subscriptions:
            stats, key = tracked.stats(), tracked.key
            for attr, name, _ in CONSUMER_VALUES:
                value, totals = float(getattr(stats, attr)), self._figures[name]
                totals[key] = value if attr == "lag" else totals.get(key, 0.0) + value - tracked.last[attr]
                tracked.last[attr] = value
            own = getattr(stats, "latency", None)
            if isinstance(own, LatencyHistogram) and own.bounds == LATENCY_BUCKETS_S:
                counts, total = own.snapshot()
                before, before_sum = tracked.latency
                gained = [c - p for c, p in zip(counts, before, strict=True)]
                self._figures[CONSUMER_LATENCY].setdefault(key, LatencyHistogram()).add(gained, total - before_sum)
                tracked.latency = (counts, total)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            self._refresh()
            figures = {name: sorted(by_key.items()) for name, by_key in self._figures.items()}
        for name, (kind, help, labelnames) in HOP_FAMILIES.items():
            if figures[name] and kind == "histogram":
                yield histogram_family(name, help, labelnames, figures[name])
            elif figures[name]:
                yield value_family(kind, name, help, labelnames, figures[name])


_PROCESS = HopCollector()  # the process's ranks and consumers: what the default registry exposes
_collectors: weakref.WeakKeyDictionary[CollectorRegistry, HopCollector] = weakref.WeakKeyDictionary()
_default: CollectorRegistry | None = None
_registries_lock = threading.Lock()


def default_registry() -> CollectorRegistry:
    """The process's registry (``REGISTRY``), made on first use; what ``serve`` exposes unless told otherwise."""
    global _default
    with _registries_lock:
        if _default is None:
            from prometheus_client.registry import CollectorRegistry

            _default = CollectorRegistry()
            _default.register(_PROCESS)
        return _default


def hops_of(registry: CollectorRegistry | None) -> HopCollector:
    """The hop collector of ``registry`` (registered on it the first time); None: the process's own."""
    if registry is None or registry is _default:
        return _PROCESS
    with _registries_lock:
        collector = _collectors.get(registry)
        if collector is None:
            collector = _collectors[registry] = HopCollector()
            registry.register(collector)
        return collector


def __getattr__(name: str) -> Any:
    if name == "REGISTRY":
        return default_registry()
    if name == "CONTENT_TYPE":
        from prometheus_client import CONTENT_TYPE_LATEST

        return CONTENT_TYPE_LATEST
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the pipeline and consumer hops ------------------------------------------------------------------------------


class PipelineMetrics:
    """A pipeline rank's counters (read from its ``RunStats`` at scrape time) and per-message histograms.

    The histograms are ``LatencyHistogram``s, not ``prometheus_client.Histogram``: the latter costs over 1 % of a
    small message's hop (the figures are in ``LatencyHistogram``'s docstring), and needs prometheus-client loaded.
    """

    def __init__(self, pipeline: Any, registry: CollectorRegistry | None = None) -> None:
        stream = pipeline.config.stream
        self.labels = {
            "stream": stream.stream_id,
            "experiment": stream.experiment,
            "run": str(stream.run),
            "rank": str(pipeline.shard.rank),
        }
        key = tuple(self.labels[n] for n in PIPELINE_LABELS)
        self.encode, self.latency = hops_of(registry).add_rank(key, pipeline.stats)

    def emitted(self, created_ns: int, encoded_ns: int) -> None:
        """One message went to every handler: it was created at ``created_ns`` and serialized by ``encoded_ns``."""
        self.encode.observe((encoded_ns - created_ns) / 1e9)
        self.latency.observe_since(created_ns)


def split_address(address: str) -> tuple[str, str, str]:
    """``experiment/run/stream-id`` → (experiment, run, stream id); unknown parts are empty."""
    parts = address.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "", "", address


def track_subscription(subscription: Any, registry: CollectorRegistry | None = None) -> dict[str, str]:
    """Export a subscription's stats and latency (labels from its stream address and group); returns the labels."""
    experiment, run, stream = split_address(subscription.stream)
    labels = {"stream": stream, "experiment": experiment, "run": run, "group": subscription.group}
    hops_of(registry).add_subscription(tuple(labels[n] for n in CONSUMER_LABELS), subscription.stats)
    return labels


# --- the buffer hop ----------------------------------------------------------------------------------------------


def group_accounting(stream: dict[str, Any], group: dict[str, Any]) -> dict[str, int]:
    """What became of the data messages a group could get, from the buffer's stats of a stream and one group.

    ``in``: data messages the buffer took (its head offset); ``out``: first deliveries to the group (redelivered
    copies are not counted again); ``skipped``: skipped by the group's policy or evicted before it got them;
    ``held``: in the log, not yet sent to the group. For a group that joined at the beginning,
    ``in == out + skipped + held`` at every moment: a message sent back for redelivery stays in ``out`` (its first
    delivery), a copy sent again is counted in ``redelivered`` only, and a send that failed counts nowhere (the
    message is still held).
    """
    head = int(stream.get("head", 0))
    cursor = int(group.get("cursor", head))
    redelivered = int(group.get("redelivered", 0))
    return {
        "in": head,
        "out": int(group.get("delivered", 0)) - redelivered,
        "skipped": int(group.get("skipped", 0)) + int(group.get("expired", 0)),
        "held": max(0, head - cursor),
        "redelivered": redelivered,
        "lag": int(group.get("lag", 0)),
    }


# --- serving -----------------------------------------------------------------------------------------------------


def serve(port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None) -> WSGIServer:
    """Serve ``registry`` (default: the process's) at http://host:port/metrics from a daemon thread
    (``prometheus_client.start_http_server``); returns the server (``server_address``, ``shutdown()``)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=host, registry=default_registry() if registry is None else registry)
    return server
