"""``batch``: send ``size`` events per message as one ``FrameBatch``; the rest goes out at the end.

It must be the last step (the pipeline config checks this), since later steps work on single frames. A calibration
update flushes the frames held so far first, so message order still tells which constants a frame was made with.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.frames import CalibrationMessage, Frame, FrameBatch
from photonstream.processing.base import StepBase, StepOutput, registry


class BatchOptions(PluginOptions):
    type: Literal["batch"] = "batch"
    size: int = Field(ge=1, le=100_000, description="events per message")


@registry.register
class Batch(StepBase):
    Options: ClassVar[type[PluginOptions]] = BatchOptions

    def __init__(self, options: BatchOptions) -> None:
        super().__init__(options)
        self.options: BatchOptions = options
        self._pending: list[Frame] = []

    def apply(self, frame: Frame) -> StepOutput:
        self._pending.append(frame)
        if len(self._pending) < self.options.size:
            return []
        return self.flush()

    def flush(self) -> StepOutput:
        if not self._pending:
            return []
        batch = FrameBatch(frames=self._pending, stream_id=self._pending[0].stream_id)
        self._pending = []
        return [batch]

    def on_calibration(self, message: CalibrationMessage) -> StepOutput:
        return [*self.flush(), message]
