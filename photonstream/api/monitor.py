"""Live figures of streams inside the API process, for the dashboard, ``photonstream status`` and /metrics/streams.

- the buffer's stats, fetched at most once a second whoever asks (a page with ten streams costs one request), with
  rates computed here from the counters' differences;
- per stream that someone is looking at, a ``StreamWatch``: a thread in the buffer group ``_monitor`` with policy
  ``latest`` and credit 1 (it never holds the producer back and sees the newest message each time it asks), at most
  ``sample_hz`` messages a second. From those samples: the latest full detector image (rendered to a PNG on
  request), the latest thumbnails (a strip), a virtual powder pattern, TOF histograms (frames with a ``waveform``),
  the hit fraction, and the creation → monitor latency;
- the results channel through a ``ResultsReader`` (any callable; none until the service has one).

Streams that veto misses (``thumbnail`` + ``veto`` steps) send most frames as metadata and a small ``thumbnail``
only: those never take the frame view's place (it would flip between the detector image and 64 × 64 pixels). The
frame view keeps the newest full image, a hit's in preference: a full miss (the monitor sample the veto keeps)
replaces a hit only once that hit is ``HIT_KEPT_S`` old. Every sampled frame's thumbnail goes to the strip.

A watch nobody asked about for ``idle_s`` is stopped (its ZeroMQ context is terminated, which wakes the thread).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import zmq
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from photonstream.api.ui.render import FramePicture, PowderProfile, frame_picture, layout_of, thumbnail_strip
from photonstream.errors import PhotonstreamError
from photonstream.frames import EndMessage, Frame, FrameBatch, Message, StartMessage
from photonstream.metrics import (
    CONSUMER_LABELS,
    LatencyHistogram,
    group_accounting,
    histogram_family,
    registry_of,
    split_address,
)
from photonstream.store.models import Stream
from photonstream.store.streams import StreamState

log = logging.getLogger("photonstream.api.monitor")

MONITOR_GROUP = "_monitor"
THUMBNAIL = "thumbnail"  # the thumbnail step's array (its default output name)
THUMBNAILS_KEPT = 8  # thumbnails in the strip
HIT_KEPT_S = 30.0  # how long a hit's image stays in view against newer full misses
StatsSource = Callable[[], dict[str, Any]]
Subscriber = Callable[[str, zmq.Context], Iterator[Message]]


class ResultsReader(Protocol):
    """The results channel: items of a stream after id ``after`` (each a dict with an increasing ``id``)."""

    def __call__(self, stream_id: str, after: int, limit: int) -> list[dict[str, Any]]: ...


def buffer_subscriber(endpoint: str) -> Subscriber:
    def open_subscription(address: str, context: zmq.Context) -> Iterator[Message]:
        from photonstream.client import subscribe

        return subscribe(endpoint, address, group=MONITOR_GROUP, policy="latest", start="beginning", credit=1,
                         context=context)  # fmt: skip

    return open_subscription


def buffer_stats_source(endpoint: str, timeout_s: float = 1.0) -> StatsSource:
    def fetch() -> dict[str, Any]:
        from photonstream.buffer.cli import fetch_stats

        return fetch_stats(endpoint, timeout_s)

    return fetch


def _rounded(values: np.ndarray, digits: int = 4) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, dtype=np.float64)]


def image_array(frame: Frame, detector_shape: tuple[int, ...] = ()) -> np.ndarray | None:
    """The frame's full detector image: ``data`` if it has one, else its first array of two or more dimensions
    that is not a thumbnail or waveform; with ``detector_shape`` (the start message's), only one of that many
    pixels (a frame the veto stripped carries none)."""
    names = ["data", *(n for n in frame.arrays if n != "data")]
    for name in names:
        if name in frame.arrays and name not in (THUMBNAIL, "waveform"):
            value = frame.array(name)
            if value.ndim >= 2 and (not detector_shape or value.size == int(np.prod(detector_shape))):
                return value
    return None


def hit_of(frame: Frame) -> bool | None:
    """The hit finder's verdict on the frame (None without one)."""
    hit = frame.metadata.get("hit")
    return None if hit is None else bool(hit)


def thumbnail_array(frame: Frame) -> np.ndarray | None:
    """The frame's ``thumbnail`` (two-dimensional), if it has one."""
    if THUMBNAIL not in frame.arrays:
        return None
    value = frame.array(THUMBNAIL)
    return value if value.ndim == 2 and value.size else None


@dataclass(frozen=True)
class ShownFrame:
    """The frame in the frame view: ``version`` counts changes (the page's cache key)."""

    version: int
    frame: Frame
    image: np.ndarray
    seen_at: float  # time.monotonic() when the monitor got it

    @property
    def hit(self) -> bool | None:
        return hit_of(self.frame)


@dataclass(frozen=True)
class Thumbnail:
    event: int
    hit: bool | None
    image: np.ndarray


def result_fields(item: dict[str, Any]) -> dict[str, Any]:
    """A result's own fields: under ``data`` if it has them there, else the item itself."""
    data = item.get("data")
    return data if isinstance(data, dict) else item


def latest_of_kinds(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The newest result of each kind (``hit_rate``, ``indexing_rate``, ``tof_histogram``, ...)."""
    return {str(item.get("kind")): result_fields(item) for item in results if item.get("kind")}


def fraction(fields: dict[str, Any] | None, part: str, whole: str) -> float | None:
    """``rate`` of a hit/indexing-rate result, else part / whole (None without such a result)."""
    if not fields:
        return None
    if isinstance(fields.get("rate"), int | float):
        return float(fields["rate"])
    total = fields.get(whole)
    return float(fields.get(part, 0)) / total if isinstance(total, int | float) and total > 0 else None


def tof_of(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``tof_histogram`` result as the page draws it (bin centres and counts)."""
    if not fields or "edges" not in fields or "counts" not in fields:
        return None
    edges = np.asarray(fields["edges"], dtype=np.float64)
    counts = np.asarray(fields["counts"], dtype=np.float64)
    if counts.ndim > 1:
        counts = counts.sum(axis=0)
    if edges.size != counts.size + 1:
        return None
    return {"mq": _rounded(0.5 * (edges[1:] + edges[:-1])), "counts": [int(c) for c in counts]}


class StreamWatch:
    """Samples one stream (its runs' buffer addresses in turn) from a thread of its own."""

    def __init__(self, stream_id: str, addresses: list[str], subscriber: Subscriber, sample_hz: float) -> None:
        self.stream_id = stream_id
        self.addresses = addresses
        self.subscriber = subscriber
        self.period_s = 1.0 / sample_hz
        self.latency = LatencyHistogram()
        self.viewed_at = time.monotonic()
        self.address = ""
        self.start: StartMessage | None = None
        self.end: EndMessage | None = None
        self.error = ""
        self.sampled = 0  # data messages seen
        self.events_sampled = 0
        self.hits = 0
        self.hit_known = 0
        self.frame: ShownFrame | None = None  # the newest full image (a hit's in preference)
        self.thumbnails: deque[Thumbnail] = deque(maxlen=THUMBNAILS_KEPT)
        self.thumbnails_version = 0
        self.powder: PowderProfile | None = None
        self.tof: Any = None  # TofAnalyzer
        self.tof_disabled = False
        self._picture: tuple[int, FramePicture] | None = None
        self._strip: tuple[int, FramePicture] | None = None
        self.finished_at: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._context = zmq.Context()
        self._thread = threading.Thread(target=self._run, name=f"monitor-{stream_id[:8]}", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        """Stop the thread: terminating the context wakes it from any wait (done in the background)."""
        if self._stop.is_set():
            return
        self._stop.set()
        threading.Thread(target=self._context.term, name="monitor-stop", daemon=True).start()

    def _run(self) -> None:
        try:
            for address in self.addresses:
                if self._stop.is_set():
                    break
                self.address = address
                messages = self.subscriber(address, self._context)
                try:
                    for message in messages:
                        began = time.monotonic()
                        self._take(message)
                        if isinstance(message, EndMessage):
                            break
                        # pace after data only: a data message may already wait behind the start message
                        paced = isinstance(message, Frame | FrameBatch)
                        if paced and self._stop.wait(max(0.0, self.period_s - (time.monotonic() - began))):
                            break
                finally:
                    with contextlib.suppress(Exception):
                        messages.close()  # type: ignore[attr-defined]
        except zmq.ContextTerminated:
            pass
        except PhotonstreamError as exc:
            self.error = str(exc)
        except Exception as exc:
            log.exception("monitor of stream %s", self.stream_id)
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.finished_at = time.monotonic()
            if not self._stop.is_set():
                self._context.term()

    # -- what a sample tells ---------------------------------------------------------------------------------
    def _take(self, message: Message) -> None:
        if isinstance(message, StartMessage):
            with self._lock:
                self.start, self.powder, self.tof, self.tof_disabled = message, None, None, False
            return
        if isinstance(message, EndMessage):
            self.end = message
            return
        frames = message.frames if isinstance(message, FrameBatch) else [message] if isinstance(message, Frame) else []
        if not frames:
            return
        self.latency.observe_since(message.created_ns)
        self.sampled += 1
        self.events_sampled += len(frames)
        for frame in frames:
            hit = frame.metadata.get("hit")
            if hit is not None:
                self.hit_known += 1
                self.hits += bool(hit)
        shape = tuple(self.start.geometry.detector_shape) if self.start is not None else ()
        full = [(frame, image) for frame in frames if (image := image_array(frame, shape)) is not None]
        thumbnails = [Thumbnail(frame.event, hit_of(frame), thumb)
                      for frame in frames if (thumb := thumbnail_array(frame)) is not None]  # fmt: skip
        with self._lock:
            if full:
                # of a batch: its newest hit, else its newest full image
                frame, image = next((f for f in reversed(full) if hit_of(f[0])), full[-1])
                self._show(frame, image)
                self._add_powder(image)
            if thumbnails:
                self.thumbnails.extend(thumbnails[-THUMBNAILS_KEPT:])
                self.thumbnails_version += 1
            if "waveform" in frames[-1].arrays:
                self._add_tof(frames)

    def _show(self, frame: Frame, image: np.ndarray) -> None:
        now = time.monotonic()
        shown = self.frame
        if shown is not None and shown.hit and not hit_of(frame) and now - shown.seen_at < HIT_KEPT_S:
            return  # a recent hit stays in view
        self.frame = ShownFrame(shown.version + 1 if shown else 1, frame, image, now)

    def _add_powder(self, image: np.ndarray) -> None:
        # image_array took only full detector images: thumbnails never rebuild the whole-detector profile
        if self.powder is None or self.powder.index.size != image.size:
            self.powder = PowderProfile(layout_of(self.start, image.shape))
        self.powder.add(image)

    def _add_tof(self, frames: list[Frame]) -> None:
        if self.tof_disabled:
            return
        from photonstream.consumers.tof import TofAnalyzer

        try:
            if self.tof is None:
                self.tof = TofAnalyzer(start=self.start) if self.start is not None else TofAnalyzer()
            self.tof.process(frames)
        except (PhotonstreamError, ValueError, KeyError) as exc:
            self.tof_disabled = True
            self.error = f"TOF histograms off: {exc}"

    # -- what the dashboard reads --------------------------------------------------------------------------
    def picture(self, max_size: int = 512) -> FramePicture | None:
        """The frame view: the newest full image (see ``_show``), never a thumbnail."""
        with self._lock:
            if self.frame is None:
                return None
            shown = self.frame
            cached = self._picture
            start = self.start
        if cached is not None and cached[0] == shown.version:
            return cached[1]
        peaks = shown.frame.metadata.get("peaks")
        peaks_array = np.asarray(peaks) if peaks is not None and np.size(peaks) else None
        picture = frame_picture(shown.image, peaks_array, layout_of(start, shown.image.shape), max_size)
        self._picture = (shown.version, picture)
        return picture

    def strip(self) -> FramePicture | None:
        """The newest thumbnails side by side (oldest left), each marked hit or miss below."""
        with self._lock:
            if not self.thumbnails:
                return None
            version, kept, cached = self.thumbnails_version, list(self.thumbnails), self._strip
        if cached is not None and cached[0] == version:
            return cached[1]
        strip = thumbnail_strip([t.image for t in kept], [t.hit for t in kept], THUMBNAILS_KEPT)
        self._strip = (version, strip)
        return strip

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            frame_info = None
            if self.frame is not None:
                shown = self.frame
                peaks = shown.frame.metadata.get("peaks")
                frame_info = {
                    "version": shown.version,
                    "event": shown.frame.event,
                    "shape": list(shown.image.shape),
                    "peaks": len(peaks) if peaks is not None else 0,
                    "hit": shown.hit,
                    "age_s": round(time.monotonic() - shown.seen_at, 1),
                }
            thumbnails = None
            if self.thumbnails:
                thumbnails = {"version": self.thumbnails_version, "events": [t.event for t in self.thumbnails],
                              "hits": [t.hit for t in self.thumbnails], "kept": THUMBNAILS_KEPT}  # fmt: skip
            powder = None
            if self.powder is not None and self.powder.frames:
                powder = {"q": _rounded(self.powder.q), "intensity": _rounded(self.powder.intensity()),
                          "frames": self.powder.frames}  # fmt: skip
            tof = None
            if self.tof is not None:
                histogram = self.tof.histograms().get("mq")
                if histogram is not None:
                    tof = {"mq": _rounded(histogram.centers), "counts": [int(c) for c in histogram.total]}
        p50, p99 = self.latency.quantile(0.5), self.latency.quantile(0.99)
        return {
            "address": self.address,
            "sampled": self.sampled,
            "frame": frame_info,
            "thumbnails": thumbnails,
            "powder": powder,
            "tof": tof,
            "hit_fraction": self.hits / self.hit_known if self.hit_known else None,
            "events_per_message": self.events_sampled / self.sampled if self.sampled else None,
            "latency": {
                "count": self.latency.count,
                "p50_ms": None if p50 is None else round(p50 * 1e3, 3),
                "p99_ms": None if p99 is None else round(p99 * 1e3, 3),
            },
            "ended": self.end is not None,
            "error": self.error,
        }


class Monitor:
    def __init__(
        self,
        stats_source: StatsSource,
        subscriber: Subscriber,
        results: ResultsReader | None = None,
        *,
        sample_hz: float = 2.0,
        idle_s: float = 60.0,
        stats_max_age_s: float = 1.0,
    ) -> None:
        self.stats_source = stats_source
        self.subscriber = subscriber
        self.results = results
        self.sample_hz = sample_hz
        self.idle_s = idle_s
        self.stats_max_age_s = stats_max_age_s
        self.buffer_error = ""
        self._stats: dict[str, Any] = {}
        self._stats_at = -1e9
        self._previous: dict[str, tuple[float, float]] = {}
        self._rates: dict[str, float] = {}
        self._watches: dict[str, StreamWatch] = {}
        self._results: dict[str, deque[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    # -- the buffer's stats ----------------------------------------------------------------------------------
    def buffer_stats(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            if now - self._stats_at < self.stats_max_age_s:
                return self._stats
            self._stats_at = now
            try:
                stats = self.stats_source()
                self.buffer_error = ""
            except (PhotonstreamError, zmq.ZMQError, ValueError) as exc:
                self.buffer_error = str(exc)
                stats = {}
            self._stats = stats
            for address, stream in stats.get("streams", {}).items():
                self._rate(f"in:{address}", now, stream.get("head", 0))
                for name, group in stream.get("groups", {}).items():
                    self._rate(f"out:{address}:{name}", now, group.get("delivered", 0))
            self._reap()
            return stats

    def _rate(self, key: str, now: float, value: float) -> None:
        previous = self._previous.get(key)
        self._previous[key] = (now, value)
        if previous is not None and now > previous[0]:
            self._rates[key] = max(0.0, (value - previous[1]) / (now - previous[0]))

    def rate(self, key: str) -> float:
        return round(self._rates.get(key, 0.0), 3)

    @staticmethod
    def addresses(stream: Stream) -> list[str]:
        return list((stream.data_endpoint or {}).get("streams", []))

    def hops(self, stream: Stream) -> list[dict[str, Any]]:
        """Per run: the buffer's intake and, per consumer group, what it got, skipped and still has to get."""
        stats = self.buffer_stats().get("streams", {})
        out = []
        for address in self.addresses(stream):
            _experiment, run, _ = split_address(address)
            held = stats.get(address)
            if held is None:
                out.append({"address": address, "run": run, "present": False, "groups": []})
                continue
            groups = []
            for name, group in sorted(held.get("groups", {}).items()):
                groups.append({"name": name, "policy": group.get("policy", ""), "members": group.get("members", 0),
                               "inflight": group.get("inflight", 0), "rate_out": self.rate(f"out:{address}:{name}"),
                               **group_accounting(held, group)})  # fmt: skip
            out.append({
                "address": address, "run": run, "present": True, "in": int(held.get("head", 0)),
                "bytes_in": int(held.get("bytes_in", 0)), "rate_in": self.rate(f"in:{address}"),
                "memory_fill": held.get("memory_fill", 0.0), "blocked": held.get("blocked", ""),
                "ended": bool(held.get("ended")), "groups": groups,
            })  # fmt: skip
        return out

    # -- watches ---------------------------------------------------------------------------------------------
    def watch(self, stream: Stream) -> StreamWatch | None:
        """The stream's watch (started on first use) while it streams or its data may still be in the buffer."""
        addresses = self.addresses(stream)
        if not addresses or StreamState(stream.state) in (StreamState.QUEUED, StreamState.STARTING):
            return None
        with self._lock:
            watch = self._watches.get(stream.id)
            retry = watch is not None and watch.end is None and time.monotonic() - (watch.finished_at or 1e18) > 5.0
            if watch is None or retry:  # a watch that failed (buffer down, stream not there yet) tries again
                watch = StreamWatch(stream.id, addresses, self.subscriber, self.sample_hz)
                self._watches[stream.id] = watch
            watch.viewed_at = time.monotonic()
            return watch

    def _reap(self) -> None:
        now = time.monotonic()
        for stream_id, watch in list(self._watches.items()):
            if now - watch.viewed_at > self.idle_s:
                watch.stop()
                del self._watches[stream_id]

    def close(self) -> None:
        with self._lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.stop()

    # -- results channel -------------------------------------------------------------------------------------
    def latest_results(self, stream: Stream, limit: int = 20) -> list[dict[str, Any]]:
        """The stream's newest results (oldest first), if a results channel is plugged in."""
        if self.results is None:
            return []
        kept = self._results.setdefault(stream.id, deque(maxlen=limit))
        after = int(kept[-1].get("id", 0)) if kept else 0
        try:
            kept.extend(self.results(stream.id, after, 200))
        except PhotonstreamError as exc:
            log.warning("results of stream %s: %s", stream.id, exc)
        return list(kept)

    # -- views -----------------------------------------------------------------------------------------------
    def summary(self, stream: Stream) -> dict[str, Any]:
        """One row of the stream list: intake rate and the largest lag of its consumer groups."""
        hops = self.hops(stream)
        lags = [g["lag"] for h in hops for g in h["groups"] if not g["name"].startswith("_")]
        return {
            "id": stream.id,
            "owner": stream.owner,
            "experiment": stream.experiment,
            "runs": list(stream.runs),
            "state": stream.state,
            "reason": stream.reason,
            "created_at": stream.created_at.isoformat(),
            "rate": round(sum(h.get("rate_in", 0.0) for h in hops), 3),
            "received": sum(h.get("in", 0) for h in hops),
            "lag": max(lags) if lags else 0,
        }

    def detail(self, stream: Stream) -> dict[str, Any]:
        """Everything the stream page shows."""
        watch = self.watch(stream)
        sample = watch.snapshot() if watch is not None else None
        results = self.latest_results(stream)
        summary = self.summary(stream)
        reported = latest_of_kinds(results)
        hit_rate = fraction(reported.get("hit_rate"), "hits", "frames")
        if hit_rate is None and sample is not None:
            hit_rate = sample["hit_fraction"]
        tof = (sample or {}).get("tof") or tof_of(reported.get("tof_histogram"))
        if sample is not None:
            sample = {**sample, "tof": tof}
        return {
            **summary,
            "finished": StreamState(stream.state).finished,
            "hops": self.hops(stream),
            "monitor": sample,
            "hit_rate": hit_rate,
            "indexing_rate": fraction(reported.get("indexing_rate"), "indexed", "frames"),
            "results": results,
            "buffer_error": self.buffer_error,
            "at": time.time(),
        }

    # -- Prometheus ------------------------------------------------------------------------------------------
    def registry_for(self, streams: list[Stream]) -> CollectorRegistry:
        """Per-hop metrics of ``streams`` (labels stream, experiment, run, group): buffer in/out/skipped/held and
        the monitor's latency histogram, in a fresh registry (one per scrape)."""
        hop_labels = [*CONSUMER_LABELS, "policy"]
        received = CounterMetricFamily("photonstream_stream_buffer_in", "Data messages the buffer took from the "
                                       "pipeline", labels=["stream", "experiment", "run"])  # fmt: skip
        families = {
            "out": CounterMetricFamily("photonstream_stream_group_out", "Data messages delivered to the group (first "
                                       "time)", labels=hop_labels),
            "skipped": CounterMetricFamily("photonstream_stream_group_skipped", "Data messages the group will never "
                                           "get (policy or eviction)", labels=hop_labels),
            "redelivered": CounterMetricFamily("photonstream_stream_group_redelivered", "Data messages sent to the "
                                               "group again", labels=hop_labels),
            "held": GaugeMetricFamily("photonstream_stream_group_held", "Data messages in the buffer not yet sent to "
                                      "the group", labels=hop_labels),
            "lag": GaugeMetricFamily("photonstream_stream_group_lag", "Data messages the group has not finished",
                                     labels=hop_labels),
        }  # fmt: skip
        latencies: list[tuple[tuple[str, ...], LatencyHistogram]] = []
        for stream in streams:
            for hop in self.hops(stream):
                if not hop["present"]:
                    continue
                experiment, run, _ = split_address(hop["address"])
                base = [stream.id, experiment, run]
                received.add_metric(base, hop["in"])
                for group in hop["groups"]:
                    for key, family in families.items():
                        family.add_metric([*base, group["name"], group["policy"]], group[key])
            watch = self._watches.get(stream.id)
            if watch is not None and watch.latency.count:
                experiment, run, _ = split_address(watch.address)
                latencies.append(((stream.id, experiment, run, MONITOR_GROUP), watch.latency))
        latency = histogram_family("photonstream_stream_latency_seconds", "Message creation until the dashboard's "
                                   "monitor group received it", CONSUMER_LABELS, latencies)  # fmt: skip
        return registry_of([received, *families.values(), latency])
