"""``threshold``: set values below ``threshold`` to 0 and, optionally, clip values above ``clip_max``.

The result is a new array of the same dtype (the source's buffer may be shared or read-only); the clip is
applied to it in place. For integer arrays ``clip_max`` is rounded down to an integer. NaN values are left as
they are.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from photonstream.config.base import PluginOptions
from photonstream.frames import Frame
from photonstream.processing._common import ArrayStepOptions, frame_arrays
from photonstream.processing.base import StepBase, StepOutput, registry


class ThresholdOptions(ArrayStepOptions):
    type: Literal["threshold"] = "threshold"
    threshold: float = Field(description="values below this become 0")
    clip_max: float | None = Field(None, description="values above this become this value")

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdOptions:
        if not math.isfinite(self.threshold):
            raise ValueError("threshold must be a finite number")
        if self.clip_max is not None and not self.clip_max > self.threshold:
            raise ValueError(f"clip_max ({self.clip_max}) must be above threshold ({self.threshold})")
        return self


@registry.register
class Threshold(StepBase):
    Options: ClassVar[type[PluginOptions]] = ThresholdOptions

    def __init__(self, options: ThresholdOptions) -> None:
        super().__init__(options)
        self.options: ThresholdOptions = options

    def apply(self, frame: Frame) -> StepOutput:
        for name, array in frame_arrays(frame, self.options.arrays, "threshold"):
            # A new array: the source's buffer (possibly shared or read-only) is never written.
            out = np.where(array < self.options.threshold, array.dtype.type(0), array)
            ceiling = self._ceiling(out.dtype)
            if ceiling is not None:
                np.minimum(out, ceiling, out=out)
            frame.arrays[name] = out
        return [frame]

    def _ceiling(self, dtype: np.dtype) -> np.generic | None:
        """``clip_max`` in ``dtype``, or None where no value of ``dtype`` can exceed it."""
        clip = self.options.clip_max
        if clip is None:
            return None
        if dtype.kind in "iu":
            limits = np.iinfo(dtype)
            if clip >= limits.max:
                return None
            return dtype.type(max(math.floor(clip), limits.min))
        return dtype.type(clip)
