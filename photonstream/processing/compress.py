"""``compress``: compress the chosen arrays into ``EncodedArray`` (``bslz4``, ``lz4`` or ``zstd``), bit-exactly.

``bslz4`` (bitshuffle + LZ4, the DECTRIS/HDF5 layout) suits integer detector images; ``zstd`` with a level trades
CPU for size. ``frame.array(name)`` decodes on the receiving side. ``metadata["compression_ratio"]`` is the raw
size over the compressed size of the arrays this step handled (arrays already encoded are counted as they are).
Put it after every step that computes on pixel values: later steps would have to decode each frame again.
After a ``veto`` step, ``skip_missing: true`` lets the stripped frames (no ``data``) pass as they are.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from photonstream.codecs import encode_array
from photonstream.config.base import PluginOptions
from photonstream.errors import StepError
from photonstream.frames import EncodedArray, Frame
from photonstream.processing._common import ArrayStepOptions
from photonstream.processing.base import StepBase, StepOutput, registry

# The levels each codec accepts (photonstream.codecs.encode_array checks the same ranges).
LEVELS: dict[str, tuple[int, int] | None] = {"bslz4": None, "lz4": (1, 12), "zstd": (-7, 22)}


class CompressOptions(ArrayStepOptions):
    type: Literal["compress"] = "compress"
    codec: Literal["bslz4", "lz4", "zstd"] = Field("bslz4", description="compression codec")
    level: int | None = Field(None, description="lz4: 1-12 (LZ4-HC); zstd: -7..22 (default 3); bslz4: none")
    skip_missing: bool = Field(
        False, description="frames without one of the arrays pass without it (after a veto step) instead of failing"
    )

    @model_validator(mode="after")
    def _level_fits_codec(self) -> CompressOptions:
        levels = LEVELS[self.codec]
        if self.level is None:
            return self
        if levels is None:
            raise ValueError(f"codec {self.codec!r} has no compression level; leave level unset")
        low, high = levels
        if not low <= self.level <= high:
            raise ValueError(f"{self.codec} level must be {low}..{high}, got {self.level}")
        return self


def raw_nbytes(value: np.ndarray | EncodedArray) -> int:
    if isinstance(value, EncodedArray):
        return int(np.prod(value.shape, dtype=np.int64)) * np.dtype(value.dtype).itemsize
    return int(value.nbytes)


@registry.register
class Compress(StepBase):
    Options: ClassVar[type[PluginOptions]] = CompressOptions

    def __init__(self, options: CompressOptions) -> None:
        super().__init__(options)
        self.options: CompressOptions = options
        # Fail at pipeline construction, not on the first frame, when the codec's package is missing.
        encode_array(np.zeros(8, dtype=np.uint16), options.codec, options.level)

    def apply(self, frame: Frame) -> StepOutput:
        raw_total = encoded_total = 0
        for name in self.options.arrays:
            value = frame.arrays.get(name)
            if value is None and self.options.skip_missing:
                continue
            if value is None:
                present = ", ".join(sorted(frame.arrays)) or "none"
                raise StepError(f"step 'compress': event {frame.event} has no array {name!r} (it has: {present})")
            if not isinstance(value, EncodedArray):
                value = encode_array(value, self.options.codec, self.options.level)
                frame.arrays[name] = value
            raw_total += raw_nbytes(value)
            encoded_total += value.nbytes
        if encoded_total:
            frame.metadata["compression_ratio"] = raw_total / encoded_total
        elif not self.options.skip_missing:
            frame.metadata["compression_ratio"] = 1.0
        return [frame]
