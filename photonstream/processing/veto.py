"""``veto``: misses travel without their big arrays; hits (and a sample of misses) travel whole.

    steps: [{type: hitfinder}, {type: thumbnail}, {type: veto, arrays: [data], keep_every: 50}]

What facilities do when the detector outruns the analysis: the hit finder looks at every frame, and only hits go on
with their pixels. Unlike ``filter`` the other frames are not dropped: a miss still reaches every consumer, with its
metadata (the hit finder's verdict and peaks, ground truth) and whatever small arrays it has (a ``thumbnail``), but
without the arrays named in ``arrays``. So a consumer still counts and accounts for every event, and a classifier
can still learn from the misses' thumbnails, while moving and decoding the full images costs only the hits.

``keep_every: N`` keeps every Nth miss whole (the 1st, N+1th, ...): a sampled stream of real background frames for
a monitor. Frames without a ``hit`` flag pass whole unless ``require_flag`` is set (then they are stripped too).
Each judged frame gets ``metadata["vetoed"]``: true when its arrays were taken out (consumers then know the frame
never had them on the wire, rather than suspecting a fault), false when it travels whole.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from photonstream.config.base import PluginOptions
from photonstream.frames import Frame
from photonstream.processing.base import StepBase, StepOutput, registry


class VetoOptions(PluginOptions):
    type: Literal["veto"] = "veto"
    arrays: list[str] = Field(
        default_factory=lambda: ["data"], min_length=1, description="arrays taken out of vetoed frames"
    )
    keep_every: int = Field(0, ge=0, description="keep every Nth miss whole (a sample for monitors); 0: none")
    require_flag: bool = Field(False, description="also strip frames that carry no 'hit' flag")


@registry.register
class Veto(StepBase):
    Options: ClassVar[type[PluginOptions]] = VetoOptions

    def __init__(self, options: VetoOptions) -> None:
        super().__init__(options)
        self.options: VetoOptions = options
        self._misses = 0  # misses seen so far, for keep_every

    def apply(self, frame: Frame) -> StepOutput:
        hit = frame.metadata.get("hit")
        if hit is None and not self.options.require_flag:
            return [frame]
        vetoed = not bool(hit)
        if vetoed:
            self._misses += 1
            every = self.options.keep_every
            vetoed = not (every and (self._misses - 1) % every == 0)
        if vetoed:
            for name in self.options.arrays:
                frame.arrays.pop(name, None)
        frame.metadata["vetoed"] = vetoed
        return [frame]
