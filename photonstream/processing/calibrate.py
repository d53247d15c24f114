"""``calibrate``: raw ADU to calibrated values (pedestal, common mode, per-pixel gain, bad-pixel mask).

For each array named in ``arrays`` (as the output ``dtype``, float32 by default)::

    value = raw - pedestal                  # ADU above the dark level
    value -= common_mode(value)             # optional: median per row or per ASIC, bad pixels left out
    value = value / gain                    # gain_mode "divide": gain in ADU per photon (or ADU per keV)
    value = value * gain                    # gain_mode "multiply": gain in photons (or keV) per ADU
    value[mask] = 0 or NaN                  # masked_value

so with gain in ADU/photon the output counts photons, and with gain in ADU/keV it is deposited energy in keV.
Constants are converted to the output dtype once; each may be a whole-detector array or anything that
broadcasts to the frame's shape (a number, one value per panel as (panels, 1, 1), ...). The mask marks bad
pixels as nonzero (``mask_convention: nonzero-bad``, DECTRIS style) or as zero (``zero-bad``, psana style).

The start message gets the constants' identifier and version (``calibration``), file references, the arrays
themselves when ``embed: true``, and ``arrays["mask"]`` (uint8, 1 = bad pixel; combined with a mask the source
already sent). ``updates`` change constants mid-run: at the first frame whose event is >= ``from_event`` the
step emits a ``CalibrationMessage`` before that frame. Frames carry ``metadata["calibration_version"]``.
Constants an update leaves out stay as they were.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from photonstream.config.base import PluginOptions
from photonstream.errors import ConfigError, StepError
from photonstream.frames import Calibration, CalibrationMessage, Frame, StartMessage
from photonstream.processing._common import ArrayStepOptions, frame_arrays, images_become, require_image
from photonstream.processing._constants import Constant, ConstantFile, fingerprint, load_constant
from photonstream.processing.base import StepBase, StepOutput, registry

CONSTANT_NAMES = ("pedestal", "gain", "mask")


class CommonModeOptions(BaseModel):
    """Common-mode correction: subtract the median of each region, after the pedestal and before the gain."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: Literal["row", "asic"] = Field(
        "row", description="'row': median of each row within an ASIC; 'asic': median of each whole ASIC"
    )
    asic_shape: tuple[PositiveInt, PositiveInt] | None = Field(
        None, description="[rows, cols] of one ASIC (must tile the panel); default: the whole panel"
    )
    max_value: float | None = Field(
        None,
        description="pixels at or above this value (ADU after pedestal) hold photons: left out of the median",
    )


class CalibrationUpdate(BaseModel):
    """New constants that apply from event ``from_event`` on; those left out stay as they were."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    from_event: int = Field(ge=0, description="first event the new constants apply to")
    pedestal: Constant | None = None
    gain: Constant | None = None
    mask: Constant | None = None
    identifier: str | None = Field(None, min_length=1, description="name of these constants (default: derived)")

    @model_validator(mode="after")
    def _changes_something(self) -> CalibrationUpdate:
        if self.pedestal is None and self.gain is None and self.mask is None:
            raise ValueError("an update needs at least one of pedestal, gain, mask")
        return self


class CalibrateOptions(ArrayStepOptions):
    type: Literal["calibrate"] = "calibrate"
    pedestal: Constant | None = Field(None, description="dark level in ADU, subtracted first")
    gain: Constant | None = Field(None, description="per-pixel gain; see gain_mode")
    gain_mode: Literal["divide", "multiply"] = Field(
        "divide",
        description="'divide': gain in ADU per photon (or per keV); 'multiply': photons (or keV) per ADU",
    )
    mask: Constant | None = Field(None, description="bad-pixel mask; see mask_convention")
    mask_convention: Literal["nonzero-bad", "zero-bad"] = Field(
        "nonzero-bad", description="which mask values mark a bad pixel"
    )
    masked_value: Literal["zero", "nan"] = Field("zero", description="value written into bad pixels")
    common_mode: CommonModeOptions | None = None
    dtype: Literal["float32", "float64"] = Field("float32", description="dtype of the calibrated arrays")
    identifier: str | None = Field(
        None, min_length=1, description="name of the constants for consumers (default: sha256 of their bytes)"
    )
    embed: bool = Field(False, description="send the constant arrays in the start/calibration messages")
    updates: list[CalibrationUpdate] = Field(default_factory=list, description="constants that change mid-run")

    @model_validator(mode="after")
    def _does_something(self) -> CalibrateOptions:
        if self.pedestal is None and self.gain is None and self.mask is None and self.common_mode is None:
            raise ValueError("calibrate needs at least one of pedestal, gain, mask, common_mode")
        events = [u.from_event for u in self.updates]
        if any(b <= a for a, b in itertools.pairwise(events)):
            raise ValueError(f"updates must have increasing from_event (got {events})")
        return self


@dataclass(slots=True)
class ConstantSet:
    """One version of the constants: as loaded (for identifiers and embedding) and ready to apply."""

    index: int  # 0 = the constants in the start message, then one per update
    from_event: int
    identifier: str
    loaded: dict[str, np.ndarray]
    references: dict[str, str]
    pedestal: np.ndarray | None = None
    gain: np.ndarray | None = None
    bad: np.ndarray | None = None  # bool, True = bad pixel
    mask_changed: bool = False
    checked_shapes: set[tuple[int, ...]] = field(default_factory=set)


@registry.register
class Calibrate(StepBase):
    Options: ClassVar[type[PluginOptions]] = CalibrateOptions

    def __init__(self, options: CalibrateOptions) -> None:
        super().__init__(options)
        self.options: CalibrateOptions = options
        self._dtype = np.dtype(options.dtype)
        self._fill = np.nan if options.masked_value == "nan" else 0.0
        self._version_base = 0
        first = self._constant_set(0, 0, options.identifier, self._specs(options), None)
        self._sets = [first]
        for i, update in enumerate(options.updates, start=1):
            specs = self._specs(update)
            self._sets.append(self._constant_set(i, update.from_event, update.identifier, specs, self._sets[-1]))
        self._current = first
        self._next = 1

    @staticmethod
    def _specs(source: CalibrateOptions | CalibrationUpdate) -> dict[str, Any]:
        return {name: getattr(source, name) for name in CONSTANT_NAMES}

    def _constant_set(
        self,
        index: int,
        from_event: int,
        identifier: str | None,
        specs: dict[str, ConstantFile | float | list[Any] | None],
        previous: ConstantSet | None,
    ) -> ConstantSet:
        where = "calibrate" if index == 0 else f"calibrate.updates[{index - 1}]"
        loaded = dict(previous.loaded) if previous else {}
        references = dict(previous.references) if previous else {}
        for name, spec in specs.items():
            if spec is None:
                continue
            constant = load_constant(spec, f"{where}.{name}")
            loaded[name] = constant.array
            references.pop(name, None)
            if constant.reference is not None:
                references[name] = constant.reference
        bad = self._bad_pixels(loaded["mask"]) if "mask" in loaded else None
        gain = loaded["gain"].astype(self._dtype) if "gain" in loaded else None
        if gain is not None and self.options.gain_mode == "divide":
            self._check_no_zero_gain(gain, bad, where)
        if identifier is None:
            identifier = fingerprint(loaded) if loaded else "common-mode-only"
        return ConstantSet(
            index=index,
            from_event=from_event,
            identifier=identifier,
            loaded=loaded,
            references=references,
            pedestal=loaded["pedestal"].astype(self._dtype) if "pedestal" in loaded else None,
            gain=gain,
            bad=bad,
            mask_changed=specs.get("mask") is not None,
        )

    def _bad_pixels(self, mask: np.ndarray) -> np.ndarray:
        return mask != 0 if self.options.mask_convention == "nonzero-bad" else mask == 0

    @staticmethod
    def _check_no_zero_gain(gain: np.ndarray, bad: np.ndarray | None, where: str) -> None:
        zero = gain == 0
        if bad is not None:
            try:
                zero = zero & ~np.broadcast_to(bad, np.broadcast_shapes(zero.shape, bad.shape))
            except ValueError:
                raise ConfigError(f"{where}: gain shape {gain.shape} and mask shape {bad.shape} do not match") from None
        if zero.any():
            raise ConfigError(
                f"{where}.gain: {int(zero.sum())} unmasked pixels have gain 0 (division by zero); mask them"
            )

    # -- start message -------------------------------------------------------------------------------------
    def _version(self, constants: ConstantSet) -> int:
        return self._version_base + 1 + constants.index

    def _calibration(self, constants: ConstantSet, with_mask: bool) -> Calibration:
        arrays: dict[str, np.ndarray] = {}
        if self.options.embed:
            arrays = dict(constants.loaded)
        if constants.bad is not None and (self.options.embed or with_mask):
            arrays["mask"] = constants.bad.astype(np.uint8)
        return Calibration(
            identifier=constants.identifier,
            version=self._version(constants),
            arrays=arrays,
            references=dict(constants.references),
        )

    def setup(self, start: StartMessage) -> None:
        self._version_base = start.calibration.version
        if "data" in self.options.arrays:
            images_become(start, self._dtype)
        first = self._sets[0]
        source_mask = start.arrays.get("mask")
        if source_mask is not None:
            # A pixel the source already calls bad stays bad: merge it into every mask this step applies.
            source_bad = np.asarray(source_mask) != 0
            for constants in self._sets:
                if constants.bad is not None:
                    constants.bad = self._merge_masks(constants.bad, source_bad)
        start.calibration = self._calibration(first, with_mask=False)
        if first.bad is None:
            return
        mask = first.bad.astype(np.uint8)
        shape = tuple(start.geometry.detector_shape)
        if shape and mask.shape != shape:
            try:
                mask = np.broadcast_to(mask, shape).copy()
            except ValueError:
                raise StepError(
                    f"step 'calibrate': mask shape {mask.shape} does not match the detector shape {shape}"
                ) from None
        start.arrays["mask"] = mask

    @staticmethod
    def _merge_masks(bad: np.ndarray, source_bad: np.ndarray) -> np.ndarray:
        try:
            return bad | source_bad
        except ValueError:
            raise StepError(
                f"step 'calibrate': mask shape {bad.shape} does not match the source's mask shape {source_bad.shape}"
            ) from None

    # -- events --------------------------------------------------------------------------------------------
    def apply(self, frame: Frame) -> StepOutput:
        out: StepOutput = []
        while self._next < len(self._sets) and frame.event >= self._sets[self._next].from_event:
            self._current = self._sets[self._next]
            self._next += 1
            calibration = self._calibration(self._current, with_mask=self._current.mask_changed)
            out.append(
                CalibrationMessage(
                    stream_id=frame.stream_id, calibration=calibration, from_event=self._current.from_event
                )
            )
        for name, raw in frame_arrays(frame, self.options.arrays, "calibrate"):
            frame.arrays[name] = self._calibrate(raw, name, frame.event)
        frame.metadata["calibration_version"] = self._version(self._current)
        out.append(frame)
        return out

    def _check_shapes(self, shape: tuple[int, ...], name: str, event: int) -> None:
        constants = self._current
        if shape in constants.checked_shapes:
            return
        for what in CONSTANT_NAMES:
            if what not in constants.loaded:
                continue
            cshape = constants.loaded[what].shape
            try:
                fits = np.broadcast_shapes(cshape, shape) == shape
            except ValueError:
                fits = False
            if not fits:
                origin = constants.references.get(what, "inline")
                raise StepError(
                    f"step 'calibrate': {what} shape {cshape} ({origin}) does not match array {name!r} "
                    f"of event {event} with shape {shape}"
                )
        constants.checked_shapes.add(shape)

    def _calibrate(self, raw: np.ndarray, name: str, event: int) -> np.ndarray:
        self._check_shapes(raw.shape, name, event)
        c = self._current
        value = raw.astype(self._dtype)  # always a fresh array: the source's buffer stays untouched
        if c.pedestal is not None:
            value -= c.pedestal
        if self.options.common_mode is not None:
            require_image(value, name, "calibrate", event)
            value -= self._common_mode(value, c.bad, name, event)
        if c.gain is not None:
            with np.errstate(divide="ignore", invalid="ignore"):  # gain 0 only where masked (checked)
                if self.options.gain_mode == "divide":
                    value /= c.gain
                else:
                    value *= c.gain
        if c.bad is not None:
            np.copyto(value, self._dtype.type(self._fill), where=c.bad)
        return value

    def _common_mode(self, value: np.ndarray, bad: np.ndarray | None, name: str, event: int) -> np.ndarray:
        """The correction to subtract: per-region median of the pixels that are neither bad nor photons."""
        options = self.options.common_mode
        assert options is not None
        rows, cols = value.shape[-2:]
        ar, ac = options.asic_shape or (rows, cols)
        if rows % ar or cols % ac:
            raise StepError(
                f"step 'calibrate': common_mode.asic_shape {[ar, ac]} does not tile array {name!r} of event "
                f"{event} ({rows} x {cols} per panel)"
            )
        sample = value.copy()
        if bad is not None:
            np.copyto(sample, np.nan, where=bad)
        if options.max_value is not None:
            sample[sample >= options.max_value] = np.nan
        blocks = sample.reshape(*value.shape[:-2], rows // ar, ar, cols // ac, ac)
        axes = (-3, -1) if options.region == "asic" else (-1,)
        median = np.expand_dims(nan_median(blocks, axes), axes)
        return np.broadcast_to(median, blocks.shape).reshape(value.shape)


def nan_median(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Median over ``axes`` ignoring NaN (0 where all are NaN); the axes are removed.

    Sorting puts NaN last, so the median of the n valid values sits at positions (n-1)//2 and n//2; this is
    about ten times faster than ``np.nanmedian`` on detector-sized arrays.
    """
    moved = np.moveaxis(values, axes, tuple(range(-len(axes), 0)))
    flat = moved.reshape(*moved.shape[: -len(axes)], -1)
    ordered = np.sort(flat, axis=-1)
    valid = np.count_nonzero(~np.isnan(flat), axis=-1, keepdims=True)
    low = np.take_along_axis(ordered, np.maximum(valid - 1, 0) // 2, axis=-1)
    high = np.take_along_axis(ordered, valid // 2 - (valid == 0), axis=-1)
    return np.where(valid > 0, (low + high) / 2, 0)[..., 0].astype(values.dtype)
