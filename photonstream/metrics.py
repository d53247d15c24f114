"""Metrics of every hop, in the Prometheus text format, without a dependency on prometheus-client.

    registry = Registry()
    sent = registry.counter("photonstream_x_total", "what it counts", ["stream"])
    sent.labels(stream="s1").inc()
    registry.render()                      # the text exposition format, for /metrics

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
"""

from __future__ import annotations

import bisect
import math
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

# seconds: sub-millisecond hand-offs up to a minute of backlog
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class LatencyHistogram:
    """Counts of observations per bucket (upper bounds in seconds, +Inf last), with their sum.

    Cheap to update from one thread while another reads it (a lock around each update and snapshot).
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
        out, running = [], 0
        for bound, n in zip([*self.bounds, math.inf], counts, strict=True):
            running += n
            out.append((bound, running))
        return out

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


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def label_text(labels: dict[str, str], extra: dict[str, str] | None = None) -> str:
    merged = {**labels, **(extra or {})}
    if not merged:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in merged.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class Counter:
    def __init__(self) -> None:
        self.value = 0.0
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def set(self, value: float) -> None:  # for counters read from another component's totals
        self.value = float(value)


class Gauge(Counter):
    pass


@dataclass
class Family:
    """One metric name with its children by label values."""

    name: str
    help: str
    kind: str  # counter | gauge | histogram
    labelnames: tuple[str, ...]
    buckets: tuple[float, ...] = LATENCY_BUCKETS_S
    children: dict[tuple[str, ...], Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def labels(self, **labels: Any) -> Any:
        if set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name}: labels must be {list(self.labelnames)}, got {sorted(labels)}")
        key = tuple(str(labels[n]) for n in self.labelnames)
        child = self.children.get(key)
        if child is None:
            with self._lock:
                child = self.children.get(key)
                if child is None:
                    child = self._new_child()
                    self.children[key] = child
        return child

    def _new_child(self) -> Any:
        if self.kind == "histogram":
            return LatencyHistogram(self.buckets)
        return Gauge() if self.kind == "gauge" else Counter()

    def clear(self) -> None:
        with self._lock:
            self.children.clear()

    def render(self) -> str:
        exposed = f"{self.name}_total" if self.kind == "counter" and not self.name.endswith("_total") else self.name
        lines = [f"# HELP {exposed} {self.help}\n", f"# TYPE {exposed} {self.kind}\n"]
        for key, child in sorted(self.children.items()):
            labels = dict(zip(self.labelnames, key, strict=True))
            if self.kind == "histogram":
                for bound, running in child.cumulative():
                    lines.append(f"{self.name}_bucket{label_text(labels, {'le': _number(bound)})} {running}\n")
                counts, total = child.snapshot()
                lines.append(f"{self.name}_sum{label_text(labels)} {_number(total)}\n")
                lines.append(f"{self.name}_count{label_text(labels)} {sum(counts)}\n")
            else:
                lines.append(f"{exposed}{label_text(labels)} {_number(child.value)}\n")
        return "".join(lines)


class Registry:
    """Metric families plus callbacks that refresh values from live objects just before each scrape."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self._callbacks: list[Callable[[], bool]] = []
        self._lock = threading.Lock()

    def _family(self, name: str, help: str, kind: str, labelnames: Sequence[str], **extra: Any) -> Family:
        with self._lock:
            family = self.families.get(name)
            if family is None:
                family = self.families[name] = Family(name, help, kind, tuple(labelnames), **extra)
            elif family.kind != kind or family.labelnames != tuple(labelnames):
                raise ValueError(f"metric {name} exists as a {family.kind} with labels {list(family.labelnames)}")
            return family

    def counter(self, name: str, help: str, labelnames: Sequence[str]) -> Family:
        return self._family(name, help, "counter", labelnames)

    def gauge(self, name: str, help: str, labelnames: Sequence[str]) -> Family:
        return self._family(name, help, "gauge", labelnames)

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str], buckets: Sequence[float] = LATENCY_BUCKETS_S
    ) -> Family:
        return self._family(name, help, "histogram", labelnames, buckets=tuple(buckets))

    def on_collect(self, callback: Callable[[], bool]) -> None:
        """Run ``callback`` before every scrape; it returns False once it has nothing more to report (dropped)."""
        with self._lock:
            self._callbacks.append(callback)

    def refresh(self) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        dead = [cb for cb in callbacks if not cb()]
        if dead:
            with self._lock:
                self._callbacks = [cb for cb in self._callbacks if cb not in dead]

    def collect(self) -> Iterator[Family]:
        self.refresh()
        with self._lock:
            families = list(self.families.values())
        yield from (f for f in families if f.children)

    def render(self) -> str:
        return "".join(family.render() for family in self.collect())


REGISTRY = Registry()  # the process's own: what ``serve`` exposes


# --- the pipeline hop --------------------------------------------------------------------------------------------

PIPELINE_LABELS = ("stream", "experiment", "run", "rank")


class PipelineMetrics:
    """A pipeline rank's counters (read from its ``RunStats`` at scrape time) and per-message histograms."""

    def __init__(self, pipeline: Any, registry: Registry = REGISTRY) -> None:
        stream = pipeline.config.stream
        self.labels = {
            "stream": stream.stream_id,
            "experiment": stream.experiment,
            "run": str(stream.run),
            "rank": str(pipeline.shard.rank),
        }
        r = registry
        self._messages = r.counter("photonstream_pipeline_messages_out", "Messages handed to the handlers",
                                   PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self._bytes = r.counter("photonstream_pipeline_bytes_out", "Serialized bytes handed to the handlers",
                                PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self._read = r.counter("photonstream_pipeline_events_read", "Events read from the source",
                               PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self._sent = r.counter("photonstream_pipeline_events_sent", "Events sent (alone or in batches)",
                               PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self._dropped = r.counter("photonstream_pipeline_events_dropped", "Events read and not sent (filtered)",
                                  PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self.encode = r.histogram("photonstream_pipeline_encode_seconds", "Time to serialize one message",
                                  PIPELINE_LABELS).labels(**self.labels)  # fmt: skip
        self.latency = r.histogram(
            "photonstream_pipeline_latency_seconds",
            "Message creation until every handler has it (encode and hand-off)",
            PIPELINE_LABELS,
        ).labels(**self.labels)
        stats_ref = weakref.ref(pipeline.stats)
        registry.on_collect(lambda: self._refresh(stats_ref()))

    def _refresh(self, stats: Any) -> bool:
        if stats is None:
            return False
        read = stats.counts.get("read", 0)
        self._messages.set(stats.messages_sent)
        self._bytes.set(stats.bytes_sent)
        self._read.set(read)
        self._sent.set(stats.events_sent)
        self._dropped.set(max(0, read - stats.events_sent))
        return True

    def emitted(self, created_ns: int, encoded_ns: int) -> None:
        """One message went to every handler: it was created at ``created_ns`` and serialized by ``encoded_ns``."""
        self.encode.observe((encoded_ns - created_ns) / 1e9)
        self.latency.observe_since(created_ns)


# --- the consumer hop --------------------------------------------------------------------------------------------

CONSUMER_LABELS = ("stream", "experiment", "run", "group")


def split_address(address: str) -> tuple[str, str, str]:
    """``experiment/run/stream-id`` → (experiment, run, stream id); unknown parts are empty."""
    parts = address.split("/")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return "", "", address


def track_subscription(subscription: Any, registry: Registry = REGISTRY) -> dict[str, str]:
    """Export a subscription's stats and latency (labels from its stream address and group); returns the labels."""
    experiment, run, stream = split_address(subscription.stream)
    labels = {"stream": stream, "experiment": experiment, "run": run, "group": subscription.group}
    r = registry
    families = {
        "yielded": r.counter("photonstream_consumer_messages", "Data messages handed to the application",
                             CONSUMER_LABELS),
        "bytes": r.counter("photonstream_consumer_bytes", "Payload bytes handed to the application", CONSUMER_LABELS),
        "duplicates": r.counter("photonstream_consumer_duplicates", "Redelivered copies dropped", CONSUMER_LABELS),
        "skipped": r.counter("photonstream_consumer_skipped", "Messages the group's policy skipped",
                             CONSUMER_LABELS),
        "redelivered": r.counter("photonstream_consumer_redelivered", "Messages the group had redelivered",
                                 CONSUMER_LABELS),
        "lag": r.gauge("photonstream_consumer_lag", "Messages in the log after the last one received",
                       CONSUMER_LABELS),
    }  # fmt: skip
    latency = r.histogram(
        "photonstream_consumer_latency_seconds", "Message creation until the application has it", CONSUMER_LABELS
    ).labels(**labels)
    stats_ref = weakref.ref(subscription.stats)
    # what this subscription had reported at the last scrape: only the difference is added, so several
    # subscriptions of one group (one per worker thread) sum up
    last: dict[str, Any] = {key: 0 for key in families}
    last["latency"] = ([0] * (len(latency.bounds) + 1), 0.0)

    def refresh() -> bool:
        stats = stats_ref()
        if stats is None:
            return False
        for key, family in families.items():
            value = getattr(stats, key)
            child = family.labels(**labels)
            if family.kind == "gauge":
                child.set(value)
            else:
                child.inc(value - last[key])
            last[key] = value
        own = getattr(stats, "latency", None)
        if isinstance(own, LatencyHistogram) and own.bounds == latency.bounds:
            counts, total = own.snapshot()
            before, before_sum = last["latency"]
            latency.add([c - p for c, p in zip(counts, before, strict=True)], total - before_sum)
            last["latency"] = (counts, total)
        return True

    registry.on_collect(refresh)
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


def serve(port: int, host: str = "127.0.0.1", registry: Registry = REGISTRY) -> ThreadingHTTPServer:
    """Serve ``registry`` at http://host:port/metrics from a daemon thread; returns the server (``shutdown()``)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # only runs asked for metrics pay for it

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = registry.render().encode()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="photonstream-metrics", daemon=True).start()
    return server
