"""A small, strict Stream V2 decoder written from the DECTRIS specification, independent of photonstream.

It follows the public spec (dectris/documentation: stream_v2/README.md, cbor/dectris-compression-tag.md) and
is as strict as DECTRIS' example C parser: the self-describe prefix is required, ``type`` must be the first
key, the image, mask and flatfield arrays have exactly two dimensions, floats must be CBOR floats and integers
unsigned.
Decompression uses ``dectris-compression`` directly. Nothing from photonstream is imported.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import cbor2
import numpy as np
from dectris.compression import decompress

MAGIC = bytes.fromhex("d9d9f7")


class SpecViolation(ValueError):
    pass


def typed_array_dtype(tag: int) -> np.dtype:
    """RFC 8746: tag = 0b010_f_s_e_ll (float, signed, little-endian, log2 of the size)."""
    if not 64 <= tag <= 87:
        raise SpecViolation(f"tag {tag} is not a typed array")
    is_float, signed, little, ll = (tag >> 4) & 1, (tag >> 3) & 1, (tag >> 2) & 1, tag & 3
    if is_float:
        if ll == 3:
            raise SpecViolation("binary128 typed arrays are not supported here")
        kind, size = "f", 2 << ll
    else:
        if signed and little and ll == 0:
            raise SpecViolation("tag 76 is unassigned")
        kind, size = ("i" if signed else "u"), 1 << ll
    order = "|" if size == 1 else ("<" if little else ">")
    return np.dtype(f"{order}{kind}{size}")


def _hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
    if tag.tag == 56500:
        algorithm, modifier, data = tag.value
        if algorithm not in ("bslz4", "lz4") or not isinstance(data, bytes) or len(data) < 12:
            raise SpecViolation(f"bad compression tag content ({algorithm!r})")
        if algorithm == "lz4" and modifier != 0:
            raise SpecViolation("lz4 modifier must be 0")
        return decompress(data, algorithm, elem_size=modifier)
    if 64 <= tag.tag <= 87:
        if not isinstance(tag.value, bytes):
            raise SpecViolation("typed array content is not a byte string")
        return np.frombuffer(tag.value, dtype=typed_array_dtype(tag.tag))
    if tag.tag == 40:
        dims, array = tag.value
        if not all(isinstance(n, int) and n >= 0 for n in dims):
            raise SpecViolation(f"multi-dimensional array dims {dims} are not unsigned integers")
        if not isinstance(array, np.ndarray) or array.size != int(np.prod(dims)):
            raise SpecViolation(f"dims {dims} do not match the typed array")
        return array.reshape(dims)
    raise SpecViolation(f"unexpected tag {tag.tag}")


def _need(message: dict[str, Any], key: str, check: Any, what: str) -> None:
    if key in message and not check(message[key]):
        raise SpecViolation(f"{message['type']}.{key} is not {what}")


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _is_float(v: Any) -> bool:
    return isinstance(v, float)


def _is_rational(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_uint(x) for x in v) and v[1] > 0


def _is_channel_map(v: Any) -> bool:
    """Channel -> image: the C parser reads these arrays with exactly two dims (elsewhere, e.g. in user_data,
    which it does not parse, any dims are valid RFC 8746)."""
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(a, np.ndarray) and a.ndim == 2 for k, a in v.items()
    )


def _is_float_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _is_float(x) for k, x in v.items())


def _is_typed_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 1


def _is_goniometer(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(axis, str) and isinstance(spec, dict) and all(map(_is_float, spec.values()))
        for axis, spec in v.items()
    )


START_FLOATS = (
    "beam_center_x",
    "beam_center_y",
    "count_time",
    "frame_time",
    "incident_energy",
    "incident_wavelength",
    "pixel_size_x",
    "pixel_size_y",
    "sensor_thickness",
)
START_UINTS = ("image_size_x", "image_size_y", "number_of_images", "saturation_value")
START_BOOLS = (
    "countrate_correction_enabled",
    "flatfield_enabled",
    "pixel_mask_enabled",
    "virtual_pixel_interpolation_enabled",
)
START_TEXTS = ("detector_description", "detector_serial_number", "sensor_material")


def decode(message: bytes) -> dict[str, Any]:
    """One message as a dict with numpy arrays; raises SpecViolation where it departs from the spec."""
    if not message.startswith(MAGIC):
        raise SpecViolation("missing the self-describe tag 55799")
    try:
        decoded = cbor2.loads(message[len(MAGIC) :], tag_hook=_hook)
    except cbor2.CBORDecodeError as exc:  # cbor2 wraps what the tag hook raised
        if isinstance(exc.__cause__, SpecViolation):
            raise exc.__cause__ from None
        raise
    if not isinstance(decoded, dict) or next(iter(decoded), None) != "type":
        raise SpecViolation("not a map whose first key is 'type'")
    kind = decoded["type"]
    if kind not in ("start", "image", "end"):
        raise SpecViolation(f"unknown message type {kind!r}")
    _need(decoded, "series_id", _is_uint, "an unsigned integer")
    _need(decoded, "series_unique_id", lambda v: isinstance(v, str), "text")
    if kind == "start":
        for key in START_FLOATS:
            _need(decoded, key, _is_float, "a float")
        for key in START_UINTS:
            _need(decoded, key, _is_uint, "an unsigned integer")
        for key in START_BOOLS:
            _need(decoded, key, lambda v: isinstance(v, bool), "a boolean")
        for key in START_TEXTS:
            _need(decoded, key, lambda v: isinstance(v, str), "text")
        _need(decoded, "arm_date", lambda v: isinstance(v, datetime), "a tag-0 date/time")
        _need(decoded, "threshold_energy", _is_float_map, "a map of channel to float")
        _need(decoded, "countrate_correction_lookup_table", _is_typed_array, "a typed array")
        _need(decoded, "goniometer", _is_goniometer, "a map of axis to {start, increment}")
        _need(decoded, "channels", lambda v: all(isinstance(c, str) for c in v), "a list of text")
        _need(decoded, "detector_translation", lambda v: len(v) == 3 and all(map(_is_float, v)), "3 floats")
        _need(decoded, "pixel_mask", _is_channel_map, "a map of channel to 2-d array")
        _need(decoded, "pixel_mask", lambda v: all(a.dtype == np.uint32 for a in v.values()), "32-bit")
        _need(decoded, "flatfield", _is_channel_map, "a map of channel to 2-d array")
        _need(decoded, "image_dtype", lambda v: v in ("uint8", "uint16", "uint32"), "a known dtype name")
    elif kind == "image":
        _need(decoded, "image_id", _is_uint, "an unsigned integer")
        _need(decoded, "data", _is_channel_map, "a map of channel to 2-d array")
        for key in ("real_time", "start_time", "stop_time"):
            _need(decoded, key, _is_rational, "a rational [num, den]")
        _need(decoded, "series_date", lambda v: isinstance(v, datetime), "a tag-0 date/time")
        if "image_id" not in decoded or "data" not in decoded:
            raise SpecViolation("image without image_id or data")
    return decoded
