"""``thumbnail``: a small max-pooled copy of the detector image, added to the frame next to the full one.

    steps: [{type: hitfinder}, {type: thumbnail, size: 64}, {type: veto}]

The image (modules stacked along the slow axis, as ``(modules·rows, cols)``) is max-pooled by whole factors
``ceil(rows / size)`` × ``ceil(cols / size)`` to about ``size`` × ``size`` (the far edge padded with zeros), so the
few bright pixels of a Bragg spot survive where a sum or mean would wash them out. The thumbnail keeps the image's
dtype and goes into ``frame.arrays[output]``; the full array is left as it was. It is what a hit classifier or a
monitor needs of every frame, a few kilobytes instead of megabytes, so a ``veto`` step after it can strip the full
image from misses while every frame still carries a picture.

``max_pool_to`` is the same pooling the hit-classifier trainer applies to full frames, so a classifier trained on
thumbnails sees exactly the input it would have computed itself.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.frames import Frame
from photonstream.processing._common import frame_arrays, require_image
from photonstream.processing.base import StepBase, StepOutput, registry


class ThumbnailOptions(PluginOptions):
    type: Literal["thumbnail"] = "thumbnail"
    array: str = Field("data", min_length=1, description="name of the frame array to shrink")
    output: str = Field("thumbnail", min_length=1, description="name of the array the thumbnail is stored as")
    size: int = Field(64, ge=8, le=1024, description="about this many pixels per side (whole pooling factors)")


def max_pool_to(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` (2-D, or stacked modules flattened to 2-D) max-pooled by whole factors to about ``size`` per side;
    rows and columns that do not fill the last block are padded with zeros."""
    frame = np.asarray(image)
    frame = frame.reshape(-1, frame.shape[-1]) if frame.ndim != 2 else frame
    rows, cols = frame.shape
    fr, fc = max(1, -(-rows // size)), max(1, -(-cols // size))
    padded_rows, padded_cols = -(-rows // fr) * fr, -(-cols // fc) * fc
    if (padded_rows, padded_cols) != (rows, cols):
        frame = np.pad(frame, ((0, padded_rows - rows), (0, padded_cols - cols)))
    if fr == 1 and fc == 1:
        return frame
    # Two reductions, each over whole runs of memory, are several times faster than one over axes (1, 3).
    by_rows = frame.reshape(padded_rows // fr, fr, padded_cols).max(axis=1)
    return by_rows.reshape(padded_rows // fr, padded_cols // fc, fc).max(axis=2)


@registry.register
class Thumbnail(StepBase):
    Options: ClassVar[type[PluginOptions]] = ThumbnailOptions

    def __init__(self, options: ThumbnailOptions) -> None:
        super().__init__(options)
        self.options: ThumbnailOptions = options

    def apply(self, frame: Frame) -> StepOutput:
        name, data = next(frame_arrays(frame, [self.options.array], "thumbnail"))
        require_image(data, name, "thumbnail", frame.event)
        # a copy: with factors of 1 the pooled image is the data itself
        frame.arrays[self.options.output] = np.array(max_pool_to(data, self.options.size), order="C", copy=True)
        return [frame]
