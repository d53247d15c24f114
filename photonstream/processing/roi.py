"""``roi``: crop arrays to a region of interest, and say so in the start message's geometry and mask.

Either a ``box`` ``[y0, y1, x0, x1]`` on the last two axes (rows y0..y1-1, columns x0..x1-1), or ``slices``:
one ``[start, stop]`` (or null for the whole axis) per axis, matched to the array's axes from the last one
backwards, so ``[[10, 200], [0, 300]]`` crops rows and columns of a 2-D image and of every panel of a (panels,
rows, cols) stack alike. ``panels`` keeps only the listed panels of a multi-panel array (axis 0).

The geometry's ``detector_shape`` becomes the cropped shape and the beam centre (x, y) moves by the crop
origin, so it still points at the same spot; ``arrays["mask"]`` of the start message is cropped the same way.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, NonNegativeInt, model_validator

from photonstream.config.base import PluginOptions
from photonstream.errors import StepError
from photonstream.frames import Frame, StartMessage
from photonstream.processing._common import ArrayStepOptions, frame_arrays
from photonstream.processing.base import StepBase, StepOutput, registry

AxisRange = tuple[NonNegativeInt | None, NonNegativeInt | None]


class RoiOptions(ArrayStepOptions):
    type: Literal["roi"] = "roi"
    box: tuple[NonNegativeInt, NonNegativeInt, NonNegativeInt, NonNegativeInt] | None = Field(
        None, description="[y0, y1, x0, x1] on the last two axes (end exclusive)"
    )
    slices: list[AxisRange | None] | None = Field(
        None, min_length=1, description="[start, stop] or null per axis, matched from the last axis backwards"
    )
    panels: list[NonNegativeInt] | None = Field(
        None, min_length=1, description="panels (axis 0 of a multi-panel array) to keep, in this order"
    )

    @model_validator(mode="after")
    def _one_region(self) -> RoiOptions:
        if self.box is not None and self.slices is not None:
            raise ValueError("give either box or slices, not both")
        if self.box is None and self.slices is None and self.panels is None:
            raise ValueError("roi needs box, slices or panels")
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            if y1 <= y0 or x1 <= x0:
                raise ValueError(f"box {list(self.box)} is empty: it needs y0 < y1 and x0 < x1")
        for axis_range in self.slices or []:
            if axis_range is not None and None not in axis_range and axis_range[1] <= axis_range[0]:
                raise ValueError(f"slice {list(axis_range)} is empty: it needs start < stop")
        if self.panels is not None and len(set(self.panels)) != len(self.panels):
            raise ValueError(f"panels {self.panels} lists a panel twice")
        return self

    def ranges(self) -> list[AxisRange | None]:
        """Per-axis ranges, last axis last."""
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            return [(y0, y1), (x0, x1)]
        return list(self.slices or [])


@registry.register
class Roi(StepBase):
    Options: ClassVar[type[PluginOptions]] = RoiOptions

    def __init__(self, options: RoiOptions) -> None:
        super().__init__(options)
        self.options: RoiOptions = options
        self._ranges = options.ranges()

    def _index(self, shape: tuple[int, ...], what: str) -> tuple[slice | list[int], ...]:
        """The numpy index that crops an array of ``shape``; a region outside it is a ``StepError``."""
        ndim = len(shape)
        needed = len(self._ranges) + (1 if self.options.panels is not None else 0)
        if self.options.panels is not None and ndim < 3:
            raise StepError(f"step 'roi': panels need a (panels, rows, cols) array; {what} has shape {shape}")
        if needed > ndim:
            raise StepError(f"step 'roi': the region has {needed} axes but {what} has shape {shape}")
        index: list[slice | list[int]] = [slice(None)] * ndim
        for offset, axis_range in enumerate(reversed(self._ranges)):
            axis = ndim - 1 - offset
            if axis_range is None:
                continue
            start, stop = axis_range[0] or 0, axis_range[1] if axis_range[1] is not None else shape[axis]
            if start >= shape[axis] or stop > shape[axis]:
                raise StepError(f"step 'roi': [{start}, {stop}] on axis {axis} is outside {what} with shape {shape}")
            index[axis] = slice(start, stop)
        if self.options.panels is not None:
            outside = [p for p in self.options.panels if p >= shape[0]]
            if outside:
                raise StepError(f"step 'roi': panels {outside} do not exist in {what} with shape {shape}")
            index[0] = list(self.options.panels)
        return tuple(index)

    def _origin(self) -> tuple[int, int]:
        """(x, y) of the crop's first pixel in the uncropped image."""
        ranges = [None, None, *self._ranges][-2:]
        y0, x0 = ((r[0] or 0) if r is not None else 0 for r in ranges)
        return x0, y0

    def setup(self, start: StartMessage) -> None:
        geometry = start.geometry
        x0, y0 = self._origin()
        bx, by = geometry.beam_center_px
        geometry.beam_center_px = (bx - x0, by - y0)
        if geometry.detector_shape:
            shape = tuple(geometry.detector_shape)
            index = self._index(shape, "the detector")
            geometry.detector_shape = tuple(
                len(range(*part.indices(n))) if isinstance(part, slice) else len(part)
                for part, n in zip(index, shape, strict=True)
            )
        mask = start.arrays.get("mask")
        if mask is not None:
            start.arrays["mask"] = np.ascontiguousarray(mask[self._index(mask.shape, "the start message mask")])

    def apply(self, frame: Frame) -> StepOutput:
        for name, array in frame_arrays(frame, self.options.arrays, "roi"):
            index = self._index(array.shape, f"array {name!r} of event {frame.event}")
            # A copy, so the uncropped buffer can be freed and the serializer gets a contiguous array.
            frame.arrays[name] = np.ascontiguousarray(array[index])
        return [frame]
