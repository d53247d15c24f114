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

from photonstream.config.pipeline import PipelineConfig
from photonstream.errors import HandlerError, PhotonstreamError, StepError
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
from photonstream.sources.base import Shard, Source
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

    def __init__(self, config: PipelineConfig, shard: Shard = Shard()) -> None:
        self.config = config
        self.shard = shard
        self.stats = RunStats()
        self._cancelled = threading.Event()
        self._seq = 0
        self.source: Source = source_registry.create(config.source)
        if shard.size > 1 and hasattr(self.source, "set_shard"):
            self.source.set_shard(shard)  # type: ignore[attr-defined]
        self.steps: list[Step] = [step_registry.create(s) for s in config.steps]
        self.serializer: Serializer = serializer_registry.create(config.serializer)
        self.handlers: list[Handler] = [handler_registry.create(h) for h in config.handlers]
        self._need_bytes = any(h.needs_bytes for h in self.handlers)
        self.metrics = PipelineMetrics(self)

    def cancel(self) -> None:
        self._cancelled.set()

    # -- emission -------------------------------------------------------------------------------------------
    def _emit(self, message: Message) -> None:
        message.seq = self._seq
        message.created_ns = now_ns()
        self._seq += 1
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
    def run(self, progress: ProgressCallback | None = None, progress_every: int = 100) -> EndMessage:
        cfg = self.config
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
            start = StartMessage(
                stream_id=cfg.stream.stream_id,
                experiment=cfg.stream.experiment,
                run=cfg.stream.run,
                detector=info.detector,
                geometry=info.geometry,
                calibration=info.calibration,
                arrays=dict(info.arrays),
                pipeline=cfg.model_dump(mode="json"),
                source=dict(info.details),
                serializer=cfg.serializer.type,
            )
            for step in self.steps:
                step.setup(start)
            self._emit(start)
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
                if progress is not None and self.stats.counts["read"] % progress_every == 0:
                    progress(self.stats)
            for i, step in enumerate(self.steps):
                self._emit_outputs(self._through(step.flush(), self.steps[i + 1 :]))
        except KeyboardInterrupt:
            reason, error = "cancelled", "interrupted"
        except HandlerError as exc:
            reason, error, failure = "failed", str(exc), exc
        except Exception as exc:
            reason, error, failure = "failed", str(exc) or type(exc).__name__, exc
        finally:
            with contextlib.suppress(Exception):  # a failing close must not hide the run's outcome
                self.source.close()
        if progress is not None and self.stats.counts["read"] % progress_every != 0:
            progress(self.stats)  # the final figures, unless the loop just reported them
        self.stats.counts["dropped"] = self.stats.counts["read"] - self.stats.events_sent
        end = EndMessage(
            stream_id=cfg.stream.stream_id,
            events_sent=self.stats.events_sent,
            counts=dict(self.stats.counts),
            reason=reason,
            error=error,
        )
        close_error: BaseException | None = None
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


def run_pipeline(config: PipelineConfig, progress: ProgressCallback | None = None) -> EndMessage:
    return Pipeline(config).run(progress=progress)
