"""Helpers shared by the processing steps: the ``arrays`` option and fetching a frame's arrays by name."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.errors import StepError
from photonstream.frames import Frame, StartMessage


class ArrayStepOptions(PluginOptions):
    """Options of a step that transforms some of a frame's named arrays."""

    arrays: list[str] = Field(
        default_factory=lambda: ["data"],
        min_length=1,
        description="names of the frame arrays this step works on",
    )


def frame_arrays(frame: Frame, names: list[str], step: str) -> Iterator[tuple[str, np.ndarray]]:
    """Each named array of ``frame`` as numpy (decoded if compressed); a missing name is a ``StepError``."""
    for name in names:
        if name not in frame.arrays:
            present = ", ".join(sorted(frame.arrays)) or "none"
            raise StepError(f"step {step!r}: event {frame.event} has no array {name!r} (it has: {present})")
        yield name, frame.array(name)


def require_image(array: np.ndarray, name: str, step: str, event: int) -> None:
    """Steps that work on the last two axes need at least a 2-D array."""
    if array.ndim < 2:
        raise StepError(
            f"step {step!r}: array {name!r} of event {event} has shape {array.shape}; it needs 2-D or "
            "(panels, rows, cols)"
        )


def images_become(start: StartMessage, dtype: np.dtype | None) -> None:
    """A step that turns the image into another dtype says so in the start's ``image_dtype`` (None: unknown);
    the detector's saturation value no longer describes the new values."""
    if dtype is None:
        start.source.pop("image_dtype", None)
    else:
        start.source["image_dtype"] = np.dtype(dtype).name
    start.source.pop("saturation_value", None)
