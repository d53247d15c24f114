"""``filter``: drop misses, frames failing metadata conditions, or all but every Nth.

- ``drop_misses`` (default true): drop frames a hit finder marked as misses. Frames with no ``hit`` flag pass,
  unless ``require_flag`` is set (then a frame nobody judged is dropped too).
- ``where``: conditions on scalar metadata, all of which must hold, e.g. ``{n_peaks: {">=": 10}}``; operators
  ``== != < <= > >=``. A frame without the named metadata is dropped. No expressions are evaluated.
- ``every``: keep the 1st, (N+1)th, (2N+1)th ... of the frames that pass the conditions above.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.errors import StepError
from photonstream.frames import Frame
from photonstream.processing.base import StepBase, StepOutput, registry

Operator = Literal["==", "!=", "<", "<=", ">", ">="]
OPERATORS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


class FilterOptions(PluginOptions):
    type: Literal["filter"] = "filter"
    drop_misses: bool = Field(True, description="drop frames whose metadata 'hit' is false")
    require_flag: bool = Field(False, description="also drop frames that carry no 'hit' flag")
    every: int = Field(1, ge=1, description="keep one frame in every N that pass the other conditions")
    where: dict[str, dict[Operator, bool | int | float | str]] = Field(
        default_factory=dict, description='metadata conditions, e.g. {n_peaks: {">=": 10}}; all must hold'
    )


@registry.register
class Filter(StepBase):
    Options: ClassVar[type[PluginOptions]] = FilterOptions

    def __init__(self, options: FilterOptions) -> None:
        super().__init__(options)
        self.options: FilterOptions = options
        self._passed = 0  # frames that met the conditions so far, for `every`

    def apply(self, frame: Frame) -> StepOutput:
        if not self._keeps(frame):
            return []
        self._passed += 1
        if (self._passed - 1) % self.options.every:
            return []
        return [frame]

    def _keeps(self, frame: Frame) -> bool:
        hit = frame.metadata.get("hit")
        if hit is None:
            if self.options.require_flag:
                return False
        elif self.options.drop_misses and not bool(hit):
            return False
        return all(self._holds(frame, key, conditions) for key, conditions in self.options.where.items())

    @staticmethod
    def _holds(frame: Frame, key: str, conditions: dict[str, Any]) -> bool:
        if key not in frame.metadata:
            return False
        value = frame.metadata[key]
        if isinstance(value, np.ndarray):
            if value.size != 1:
                raise StepError(
                    f"step 'filter': where.{key}: metadata {key!r} of event {frame.event} is an array of "
                    f"shape {value.shape}, not one value"
                )
            value = value.item()
        elif isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, bool | int | float | str):
            raise StepError(
                f"step 'filter': where.{key}: metadata {key!r} of event {frame.event} is a "
                f"{type(value).__name__}, not a number or string"
            )
        for op, operand in conditions.items():
            try:
                if not OPERATORS[op](value, operand):
                    return False
            except TypeError:
                raise StepError(
                    f"step 'filter': where.{key}: cannot compare {value!r} (event {frame.event}) {op} {operand!r}"
                ) from None
        return True
