"""Shared builders for the processing-step tests: start messages, frames, and option validation as the
pipeline config does it (one ``ConfigError`` line naming ``steps[0].<field>``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from photonstream.config.base import one_line
from photonstream.config.pipeline import PLUGIN_NAMES, StepConfig
from photonstream.errors import ConfigError
from photonstream.frames import Frame, Geometry, StartMessage
from photonstream.processing.base import registry


class _Steps(BaseModel):
    steps: list[StepConfig]  # type: ignore[valid-type]  # the pipeline config's own step union


def parse_step(raw: dict[str, Any]) -> Any:
    """Validate one step's options exactly as ``validate_pipeline`` validates ``steps``."""
    try:
        return _Steps.model_validate({"steps": [raw]}).steps[0]
    except ValidationError as exc:
        raise ConfigError(one_line(exc, tags=PLUGIN_NAMES)) from None


def make_step(raw: dict[str, Any]) -> Any:
    options = parse_step(raw)
    return registry.create(options)


def make_start(
    detector_shape: tuple[int, ...] = (), beam_center: tuple[float, float] = (0.0, 0.0), pixel_size: float = 1e-4
) -> StartMessage:
    geometry = Geometry(pixel_size_m=pixel_size, beam_center_px=beam_center, detector_shape=detector_shape)
    return StartMessage(stream_id="test", geometry=geometry)


def make_frame(event: int, data: np.ndarray, **metadata: Any) -> Frame:
    return Frame(event=event, arrays={"data": data}, metadata=dict(metadata))


def raw_frames(shape: tuple[int, ...], count: int, seed: int = 0, high: int = 4000) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, high, size=shape, dtype=np.uint16) for _ in range(count)]
