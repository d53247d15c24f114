"""The pipeline runner: source → steps → serializer → handlers, with a start and an end message.

The runner owns the stream's sequence numbers and outcome counts. Whatever happens (source exhausted, a
``max_events`` limit, cancellation, an error in a source or step), every handler gets an end message that says
how the stream ended, and handlers are closed so that nothing queued is lost.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from photonstream.config.pipeline import PipelineConfig
from photonstream.errors import ConfigError, HandlerError, PhotonstreamError, StepError
from photonstream.frames import (
    CalibrationMessage,
    EndMessage,
    EndReason,
    Frame,
    FrameBatch,
    Message,
    StartMessage,
    now_ns,
)
from photonstream.handlers.base import Handler
from photonstream.handlers.base import registry as handler_registry
from photonstream.metrics import PipelineMetrics
from photonstream.processing.base import Step, StepOutput
from photonstream.processing.base import registry as step_registry
from photonstream.serializers.base import Serializer
from photonstream.serializers.base import registry as serializer_registry
from photonstream.sources.base import Shard, Source, outcome_counts
from photonstream.sources.base import registry as source_registry

ProgressCallback = Callable[["RunStats"], None]


@dataclass
class RunStats:
    """Live counters of a run; ``counts`` become the end message's outcome counts."""

    counts: Counter[str] = field(default_factory=Counter)
    events_sent: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    started: float = field(default_factory=time.perf_counter)
    expected_events: int | None = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def events_per_s(self) -> float:
        return self.counts["read"] / self.elapsed if self.elapsed > 0 else 0.0


def _frame_nbytes(frames: list) -> int:
    total = 0
    for f in frames:
        total += f.nbytes if hasattr(f, "nbytes") else len(f)
    return total


class Pipeline:
    """Runs one pipeline config. ``run`` is synchronous; ``cancel()`` may be called from another thread."""

    def __init__(self, config: PipelineConfig, shard: Shard = Shard(), comm: Any = None) -> None:
        """``shard`` and ``comm`` (an mpi4py communicator) make this process one rank of an MPI run."""
        self.config = config
        self.shard = shard
        self.comm = comm if shard.size > 1 else None
        self.stats = RunStats()
        self._cancelled = threading.Event()
        self._seq = shard.rank  # ranks number their messages rank, rank + size, ...: unique across the run
        self.source: Source = source_registry.create(config.source)
        if shard.size > 1 and hasattr(self.source, "set_shard"):
            self.source.set_shard(shard)  # type: ignore[attr-defined]
        self.steps: list[Step] = [step_registry.create(s) for s in config.steps]
        self.serializer: Serializer = serializer_registry.create(config.serializer)
        if shard.size > 1:
            for i, h in enumerate(config.handlers):
                if getattr(h, "bind", False):
                    raise ConfigError(ranks_cannot_bind(i, h.address, shard.size))  # type: ignore[attr-defined]
        self.handlers: list[Handler] = [handler_registry.create(h) for h in config.handlers]
        self._need_bytes = any(h.needs_bytes for h in self.handlers)
        self.metrics = PipelineMetrics(self)

    def cancel(self) -> None:
        self._cancelled.set()

    # -- emission -------------------------------------------------------------------------------------------
    def _stamp(self, message: Message) -> None:
        message.seq = self._seq
        message.created_ns = now_ns()
        self._seq += self.shard.size

    def _emit(self, message: Message, stamped: bool = False) -> None:
        if not stamped:
            self._stamp(message)
        frames = self.serializer.encode(message) if self._need_bytes else None
        encoded_ns = now_ns()
        for handler in self.handlers:
            handler.handle(message, frames)
        self.metrics.emitted(message.created_ns, encoded_ns)
        self.stats.messages_sent += 1
        if frames is not None:
            self.stats.bytes_sent += _frame_nbytes(frames)
        if isinstance(message, Frame):
            self.stats.events_sent += 1
        elif isinstance(message, FrameBatch):
            self.stats.events_sent += len(message.frames)

    def _emit_outputs(self, outputs: StepOutput) -> None:
        for item in outputs:
            if isinstance(item, CalibrationMessage | FrameBatch):
                item.stream_id = self.config.stream.stream_id
            self._emit(item)

    def _through(self, items: StepOutput, steps: list[Step]) -> StepOutput:
        for step in steps:
            nxt: StepOutput = []
            for item in items:
                if isinstance(item, Frame):
                    try:
                        nxt.extend(step.apply(item))
                    except PhotonstreamError:
                        raise
                    except Exception as exc:
                        name = type(step).Options.model_fields["type"].default
                        raise StepError(f"step {name!r} failed on event {item.event}: {exc}") from exc
                elif isinstance(item, CalibrationMessage) and hasattr(step, "on_calibration"):
                    nxt.extend(step.on_calibration(item))
                else:
                    nxt.append(item)
            items = nxt
        return items

    def _count(self, frame: Frame) -> None:
        counts = self.stats.counts
        counts["read"] += 1
        hit = frame.metadata.get("hit")
        if hit is not None:
            counts["hit" if hit else "miss"] += 1

    # -- the run --------------------------------------------------------------------------------------------
    def run(
        self, progress: ProgressCallback | None = None, progress_every: int = 100, progress_interval_s: float = 1.0
    ) -> EndMessage:
        """Run to the end; ``progress`` gets the stats every ``progress_every`` events, at least every
        ``progress_interval_s`` while events come (a slow run still reports), and once at the end."""
        cfg = self.config
        progress_at, reported = time.monotonic(), -1
        limit = cfg.max_events
        reason: EndReason = "completed"
        error = ""
        failure: BaseException | None = None
        opened_handlers: list[Handler] = []
        try:
            for handler in self.handlers:
                handler.open()
                opened_handlers.append(handler)
            info = self.source.open()
            self.stats.expected_events = info.expected_events if limit is None else limit
            if limit is not None and self.shard.size > 1:  # max_events counts the whole run: split it
                limit = len(range(self.shard.rank, limit, self.shard.size))
            details = dict(info.details)
            if self.shard.size == 1 and info.expected_events is not None:  # a rank alone cannot know the run's
                limited = info.expected_events if cfg.max_events is None else min(info.expected_events, cfg.max_events)
                details.setdefault("expected_events", limited)
            start = StartMessage(
                stream_id=cfg.stream.stream_id,
                experiment=cfg.stream.experiment,
                run=cfg.stream.run,
                detector=info.detector,
                geometry=info.geometry,
                calibration=info.calibration,
                arrays=dict(info.arrays),
                pipeline=cfg.model_dump(mode="json"),
                source=details,
                serializer=cfg.serializer.type,
            )
            for step in self.steps:
                step.setup(start)
            if self.comm is None:
                self._emit(start)
            elif not self._emit_start_of_ranks(start):
                raise _StartFailedElsewhere
            for frame in self.source.events():
                if self._cancelled.is_set():
                    reason = "cancelled"
                    break
                if limit is not None and self.stats.counts["read"] >= limit:
                    break
                frame.stream_id = cfg.stream.stream_id
                frame.run = cfg.stream.run
                outputs = self._through([frame], self.steps)
                self._count(frame)
                self._emit_outputs(outputs)
                if progress is not None and (
                    self.stats.counts["read"] % progress_every == 0
                    or time.monotonic() - progress_at >= progress_interval_s
                ):
                    progress(self.stats)
                    progress_at, reported = time.monotonic(), self.stats.counts["read"]
            for i, step in enumerate(self.steps):
                self._emit_outputs(self._through(step.flush(), self.steps[i + 1 :]))
        except _StartFailedElsewhere:
            reason = "failed"  # the rank that could not send the start says why in the combined end message
        except KeyboardInterrupt:
            reason, error = "cancelled", "interrupted"
        except HandlerError as exc:
            reason, error, failure = "failed", str(exc), exc
        except Exception as exc:
            reason, error, failure = "failed", str(exc) or type(exc).__name__, exc
        finally:
            with contextlib.suppress(Exception):  # a failing close must not hide the run's outcome
                self.source.close()
        if progress is not None and reported != self.stats.counts["read"]:
            progress(self.stats)  # the final figures, unless the loop just reported them
        self.stats.counts["dropped"] = self.stats.counts["read"] - self.stats.events_sent
        with contextlib.suppress(Exception):  # counts a source cannot give must not hide the run's outcome
            self.stats.counts.update(outcome_counts(self.source))
        end = EndMessage(
            stream_id=cfg.stream.stream_id,
            events_sent=self.stats.events_sent,
            counts=dict(self.stats.counts),
            reason=reason,
            error=error,
        )
        close_error: BaseException | None = None
        if self.comm is not None:
            end = self._end_of_ranks(end, opened_handlers)
            if self.shard.rank != 0:
                opened_handlers = []  # closed already, before rank 0 was told this rank had finished
        try:
            if not isinstance(failure, HandlerError) and opened_handlers:
                self._emit(end)
        except Exception as exc:
            close_error = exc
        finally:
            for handler in opened_handlers:
                try:
                    handler.close()
                except Exception as exc:
                    close_error = close_error or exc
        if failure is not None:
            raise failure
        if close_error is not None:
            raise close_error
        return end

    def _emit_start_of_ranks(self, start: StartMessage) -> bool:
        """Rank 0's start message goes out before any rank's events; False when another rank could not send it.

        A handler that joins ranks into one stream (the buffer keeps one start and accepts identical copies as
        joins) gets the start from every rank, byte for byte the same; other handlers (zmq-push/pub) get it from
        rank 0 only, and the other ranks wait until it has been sent. Every rank learns whether all of them could
        send: a rank that failed raises its error, the others stop too (instead of waiting for it forever).
        """
        if self.shard.rank == 0:
            self._stamp(start)
        start = self.comm.bcast(start, root=0)
        frames = self.serializer.encode(start) if self._need_bytes else None
        failure: PhotonstreamError | None = None
        try:
            for handler in self.handlers:
                if self.shard.rank == 0 or _joins_ranks(handler):
                    handler.handle(start, frames)
        except PhotonstreamError as exc:
            failure = exc
        failed_somewhere = any(self.comm.allgather(failure is not None))
        if failure is not None:
            raise failure
        return not failed_somewhere

    def _end_of_ranks(self, end: EndMessage, handlers: list[Handler]) -> EndMessage:
        """Combine every rank's outcome on rank 0; other ranks deliver everything first, then report."""
        if self.shard.rank != 0:
            close_errors: list[str] = []
            for handler in handlers:
                try:
                    handler.close()
                except Exception as exc:
                    close_errors.append(str(exc) or type(exc).__name__)
            if close_errors:  # undelivered messages fail the run: rank 0 reports them in the combined end
                end = EndMessage(
                    stream_id=end.stream_id,
                    events_sent=end.events_sent,
                    counts=end.counts,
                    reason="failed",
                    error="; ".join([end.error, *close_errors] if end.error else close_errors),
                )
        ends = self.comm.gather(end.to_dict(), root=0)
        if self.shard.rank != 0:
            return end
        counts: Counter[str] = Counter()
        for other in ends:
            counts.update(other["counts"])
        failed = [e for e in ends if e["reason"] == "failed"]
        cancelled = [e for e in ends if e["reason"] == "cancelled"]
        reason: EndReason = "failed" if failed else "cancelled" if cancelled else "completed"
        errors = "; ".join(f"rank {i}: {e['error']}" for i, e in enumerate(ends) if e["error"])
        combined = EndMessage(
            stream_id=end.stream_id,
            events_sent=sum(int(e["events_sent"]) for e in ends),
            counts=dict(counts),
            reason=reason,
            error=errors,
        )
        return combined


class _StartFailedElsewhere(Exception):
    """Another rank could not send the start message (that rank reports why)."""


def ranks_cannot_bind(index: int, address: str, ranks: int) -> str:
    """Why a binding handler is refused under several MPI ranks, and the two ways out."""
    connect_to = f"tcp://CONSUMER-HOST:{address.rsplit(':', 1)[1]}" if "://*:" in address else address
    return (
        f"handlers[{index}].bind: {ranks} MPI ranks cannot all bind {address}; set bind: false (address: "
        f"{connect_to}) so the ranks connect, and start the consumer first with "
        f"`photonstream receive --bind {address}`; or use the buffer handler"
    )


def _joins_ranks(handler: Handler) -> bool:
    """Whether a handler merges several producers of one stream (then every rank sends the start message)."""
    return bool(getattr(handler, "joins_ranks", type(handler).Options.model_fields["type"].default == "buffer"))


def run_pipeline(config: PipelineConfig, progress: ProgressCallback | None = None) -> EndMessage:
    return Pipeline(config).run(progress=progress)
