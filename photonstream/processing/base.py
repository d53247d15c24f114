"""The Step protocol and registry.

A step is created from its validated Options. ``setup(start)`` runs once before the first event and may amend the
start message (a calibration identifier, a new detector shape after ``roi``/``bin``, a mask). ``apply(frame)``
returns the messages that continue down the chain: usually ``[frame]`` (possibly modified in place), ``[]`` to drop
it, ``[CalibrationMessage, frame]`` when new constants take effect, or a ``FrameBatch`` (``batch`` step, which must
come last). ``flush()`` returns whatever a step still holds when the source is exhausted.

Steps record the outcome of an event in ``frame.metadata`` (``hit`` = True/False, ``peaks`` = N x 3 array); the
pipeline counts outcomes for the end message.
"""

from __future__ import annotations

from typing import ClassVar, Protocol, runtime_checkable

from photonstream.config.base import PluginOptions
from photonstream.frames import CalibrationMessage, Frame, FrameBatch, StartMessage
from photonstream.registry import Registry

StepOutput = list[Frame | FrameBatch | CalibrationMessage]


@runtime_checkable
class Step(Protocol):
    Options: ClassVar[type[PluginOptions]]

    def setup(self, start: StartMessage) -> None: ...

    def apply(self, frame: Frame) -> StepOutput: ...

    def flush(self) -> StepOutput: ...


class StepBase:
    """Convenience base: no setup, nothing to flush."""

    Options: ClassVar[type[PluginOptions]]

    def __init__(self, options: PluginOptions) -> None:
        self.options = options

    def setup(self, start: StartMessage) -> None:
        return None

    def apply(self, frame: Frame) -> StepOutput:
        return [frame]

    def flush(self) -> StepOutput:
        return []

    def on_calibration(self, message: CalibrationMessage) -> StepOutput:
        return [message]


registry: Registry[Step] = Registry("step", "photonstream.processing")
