"""The Stream V2 fields of ``cbor-stream2`` beyond pixels: the start message's detector fields, the images'
timing, and the stand-in for a channel an image does not carry. docs/stream_v2.md maps them field by field.

A relayed detector (a ``stream2`` source) keeps its own truth: every spec field of its start message that
photonstream does not own passes through unchanged, per channel (masks, flatfields), and its ``user_data`` stays,
with ours beside it. Fields photonstream owns are the ones its steps can change: the geometry (``bin``/``roi``
rewrite it) and the image dtype (``calibrate``/``bin``); those are written from the stream's start message, and
equal the detector's when no step changed them.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from photonstream import _stream2
from photonstream.frames import Frame, Geometry

TIME_BASE = 1_000_000_000  # denominator of the rationals we compute: nanoseconds
SPEC_IMAGE_DTYPES = ("uint8", "uint16", "uint32")
DETECTOR_KEY = "detector"  # where a detector's user_data that is not a map is kept, beside ours
GEOMETRY_FIELDS = (
    "beam_center_x",
    "beam_center_y",
    "detector_distance",
    "detector_translation",
    "image_size_x",
    "image_size_y",
    "incident_energy",
    "incident_wavelength",
    "pixel_size_x",
    "pixel_size_y",
)


def spec_dtype_name(dtype: Any) -> str | None:
    """``uint8``/``uint16``/``uint32`` for those dtypes (any byte order), else None: the spec has no name."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        return None
    return name if name in SPEC_IMAGE_DTYPES else None


def aware_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else None
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _unsigned(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _typed(key: str, value: Any) -> Any:
    """A detail converted to the spec's type for ``key``, or None when it is not one."""
    if key in _stream2.PASSTHROUGH_FLOAT:
        return float(value) if _is_number(value) else None
    if key in _stream2.PASSTHROUGH_BOOL or key == "pixel_mask_enabled":
        return value if isinstance(value, bool) else None
    if key in _stream2.PASSTHROUGH_INT:
        return _unsigned(value)
    if key in _stream2.PASSTHROUGH_TEXT:
        return value if isinstance(value, str) else None
    if key == "threshold_energy":
        if isinstance(value, dict) and value and all(_is_number(v) for v in value.values()):
            return {str(k): float(v) for k, v in value.items()}
        return None
    if key == "goniometer":
        if not isinstance(value, dict):
            return None
        axes = {
            str(axis): {k: float(v) for k, v in spec.items() if k in ("start", "increment") and _is_number(v)}
            for axis, spec in value.items()
            if isinstance(spec, dict)
        }
        return {axis: spec for axis, spec in axes.items() if spec} or None
    return None


PASSTHROUGH = (
    *_stream2.PASSTHROUGH_FLOAT,
    *_stream2.PASSTHROUGH_BOOL,
    *_stream2.PASSTHROUGH_INT,
    *_stream2.PASSTHROUGH_TEXT,
    "pixel_mask_enabled",
    "threshold_energy",
    "goniometer",
)


def detector_fields(details: dict[str, Any]) -> dict[str, Any]:
    """The spec start fields a source reported (a detector's own start, NXmx or XTC2 metadata), spec-typed."""
    fields: dict[str, Any] = {}
    for key in PASSTHROUGH:
        if key in details:
            value = _typed(key, details[key])
            if value is not None:
                fields[key] = value
    if "image_dtype" in fields and fields["image_dtype"] not in SPEC_IMAGE_DTYPES:
        del fields["image_dtype"]  # a step made the images float: the spec has no name for that
    return fields


def relayed_series(details: dict[str, Any]) -> tuple[int, str] | None:
    """The detector's (series_id, series_unique_id) when the source relays one, else None."""
    series_id, unique_id = _unsigned(details.get("series_id")), details.get("series_unique_id")
    if series_id is None or not isinstance(unique_id, str):
        return None
    return series_id, unique_id


def arm_date(details: dict[str, Any], created_ns: int) -> datetime | None:
    relayed = aware_datetime(details.get("arm_date"))
    if relayed is not None:
        return relayed
    return datetime.fromtimestamp(created_ns / 1e9, tz=UTC) if created_ns else None


def geometry_fields(geometry: Geometry, dims_2d: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "beam_center_x": float(geometry.beam_center_px[0]),
        "beam_center_y": float(geometry.beam_center_px[1]),
        "detector_distance": float(geometry.distance_m),
        "detector_translation": [0.0, 0.0, float(geometry.distance_m)],
    }
    if geometry.detector_shape:
        rows, columns = dims_2d(geometry.detector_shape)
        fields["image_size_x"], fields["image_size_y"] = columns, rows
    fields["incident_energy"] = float(geometry.photon_energy_ev)
    fields["incident_wavelength"] = geometry.wavelength_m * 1e10
    fields["pixel_size_x"] = fields["pixel_size_y"] = float(geometry.pixel_size_m)
    return fields


def relayed_geometry(details: dict[str, Any], geometry: Geometry) -> dict[str, Any]:
    """The detector's own geometry fields, when the source relays a detector and no step changed the geometry."""
    if relayed_series(details) is None or _stream2.geometry_from_start(details) != geometry:
        return {}
    fields: dict[str, Any] = {}
    for key in GEOMETRY_FIELDS:
        value = details.get(key)
        if key == "detector_translation":
            if isinstance(value, list) and len(value) == 3 and all(_is_number(v) for v in value):
                fields[key] = [float(v) for v in value]
        elif key.startswith("image_size"):
            if _unsigned(value) is not None:
                fields[key] = value
        elif _is_number(value):
            fields[key] = float(value)
    return fields


def channel_masks(arrays: dict[str, np.ndarray], channels: list[str]) -> dict[str, np.ndarray]:
    """The pixel mask of each channel: its own (``mask_<channel>``, a detector's per-channel masks), else the
    stream's ``mask``; only masks whose values fit the spec's uint32 (so the trip is exact)."""
    masks: dict[str, np.ndarray] = {}
    for channel in channels:
        mask = arrays.get(f"mask_{channel}", arrays.get("mask"))
        if mask is not None and fits_uint32(mask):
            masks[channel] = mask
    return masks


def fits_uint32(mask: np.ndarray) -> bool:
    if mask.dtype.kind == "b":
        return True
    if mask.dtype.kind not in "iu":
        return False
    return mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) <= 0xFFFFFFFF)


def channel_flatfields(calibration: dict[str, Any], channels: list[str]) -> dict[str, np.ndarray]:
    flatfields = {c: calibration.get(f"flatfield_{c}") for c in channels}
    return {c: a for c, a in flatfields.items() if isinstance(a, np.ndarray) and a.ndim >= 1}


def with_ours(theirs: Any, ours: dict[str, Any], key: str) -> Any:
    """user_data holding ours under ``key`` beside whatever the detector sent (a map stays a map)."""
    if theirs is None:
        return {key: ours}
    if isinstance(theirs, dict):
        return {**{k: v for k, v in theirs.items() if k != key}, key: ours}
    return {DETECTOR_KEY: theirs, key: ours}


def theirs_of(user_data: Any, key: str) -> Any:
    """The detector's part of a user_data that ``with_ours`` built (None when there was none)."""
    if not isinstance(user_data, dict):
        return user_data
    rest = {k: v for k, v in user_data.items() if k != key}
    if not rest:
        return None
    if set(rest) == {DETECTOR_KEY}:
        return rest[DETECTOR_KEY]
    return rest


class ImageClock:
    """The image timing fields: a relayed detector's as it sent them; otherwise computed from the frame's
    timestamp (the start of its exposure) against the series date, with ``count_time`` as the exposure."""

    def __init__(self, details: dict[str, Any], arm: datetime | None) -> None:
        count_time = details.get("count_time")
        self.exposure_ns = round(count_time * 1e9) if _is_number(count_time) and count_time > 0 else None
        series_date = aware_datetime(details.get("series_date")) or arm
        self.series_date_s = series_date.timestamp() if series_date is not None else None

    def fields(self, frame: Frame) -> dict[str, Any]:
        metadata = frame.metadata
        relayed = {
            k: list(metadata[k])
            for k in ("real_time", "start_time", "stop_time")
            if _stream2.is_rational(metadata.get(k))
        }
        series_date = aware_datetime(metadata.get("series_date"))
        if relayed or series_date is not None:
            return {**relayed, **({"series_date": series_date} if series_date is not None else {})}
        if frame.timestamp <= 0 or self.series_date_s is None:
            return {}
        if frame.timestamp < self.series_date_s:  # a replay of data older than this stream: date it from its images
            self.series_date_s = float(math.floor(frame.timestamp))
        start_ns = round((frame.timestamp - self.series_date_s) * 1e9)
        fields: dict[str, Any] = {"series_date": datetime.fromtimestamp(self.series_date_s, tz=UTC)}
        fields["start_time"] = [start_ns, TIME_BASE]
        if self.exposure_ns is not None:
            fields["real_time"] = [self.exposure_ns, TIME_BASE]
            fields["stop_time"] = [start_ns + self.exposure_ns, TIME_BASE]
        return fields


def nodata(dtype: np.dtype, dims: list[int]) -> np.ndarray:
    """An image every pixel of which is the detector's NODATA value (all bits set; NaN for floats)."""
    fill: Any = np.nan if dtype.kind == "f" else np.iinfo(dtype).max if dtype.kind == "u" else -1
    return np.full(dims, fill, dtype=dtype)
