"""DECTRIS Stream V2 wire format, shared by the ``cbor-stream2`` serializer and the ``stream2`` source.

CBOR framing (self-describe prefix), RFC 8746 typed and multi-dimensional arrays, the DECTRIS compression tag,
and the mapping of spec-only start/image messages (no photonstream ``user_data``) to photonstream objects.
docs/stream_v2.md summarises the spec.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import cbor2
import numpy as np

from photonstream.frames import AnyArray, Calibration, EncodedArray, Frame, Geometry, StartMessage

SELF_DESCRIBE = b"\xd9\xd9\xf7"  # CBOR tag 55799; the reference parser requires it in front of every message
TAG_DATETIME = 0
TAG_MULTIDIM = 40
TAG_MULTIDIM_COLUMN_MAJOR = 1040
TAG_COMPRESSED = 56500
MESSAGE_TYPES = ("start", "image", "end")
HC_KEV_ANGSTROM = 12398.419843320026  # h*c in eV*Å: wavelength (Å) = this / energy (eV)

# RFC 8746 section 2.1: tags 64-87 (76 unassigned; 83/87 are IEEE binary128, which numpy has no dtype for).
TYPED_ARRAY_DTYPES: dict[int, np.dtype] = {
    tag: np.dtype(code)
    for tag, code in {
        64: "|u1", 65: ">u2", 66: ">u4", 67: ">u8", 68: "|u1", 69: "<u2", 70: "<u4", 71: "<u8",
        72: "|i1", 73: ">i2", 74: ">i4", 75: ">i8", 77: "<i2", 78: "<i4", 79: "<i8",
        80: ">f2", 81: ">f4", 82: ">f8", 84: "<f2", 85: "<f4", 86: "<f8",
    }.items()
}  # fmt: skip
DTYPE_TAGS: dict[str, int] = {dt.str: tag for tag, dt in TYPED_ARRAY_DTYPES.items() if tag != 68}

SPEC_DTYPE_NAMES = {"uint8": "|u1", "uint16": "<u2", "uint32": "<u4"}

# Start-message fields a photonstream start carries through (from a Stream V2 source's details), by type.
PASSTHROUGH_FLOAT = ("count_time", "frame_time", "sensor_thickness")
PASSTHROUGH_BOOL = (
    "countrate_correction_enabled",
    "flatfield_enabled",
    "virtual_pixel_interpolation_enabled",
)
PASSTHROUGH_INT = ("number_of_images", "saturation_value")
PASSTHROUGH_TEXT = ("detector_serial_number", "image_dtype", "sensor_material")
START_DETAIL_FIELDS = (
    *PASSTHROUGH_FLOAT,
    *PASSTHROUGH_BOOL,
    *PASSTHROUGH_INT,
    *PASSTHROUGH_TEXT,
    "arm_date",
    "beam_center_x",
    "beam_center_y",
    "channels",
    "detector_description",
    "detector_distance",
    "detector_translation",
    "goniometer",
    "image_size_x",
    "image_size_y",
    "incident_energy",
    "incident_wavelength",
    "pixel_mask_enabled",
    "pixel_size_x",
    "pixel_size_y",
    "series_id",
    "series_unique_id",
    "threshold_energy",
    "user_data",
)


class Stream2FormatError(ValueError):
    """A message that is not well-formed Stream V2; callers turn it into their own one-line error."""


@dataclass(slots=True)
class Compressed:
    """The content of a DECTRIS compression tag: algorithm, element size (bslz4) and the compressed bytes."""

    algorithm: str
    elem_size: int
    data: bytes

    @property
    def decoded_size(self) -> int:
        if len(self.data) < 12:
            raise Stream2FormatError(f"{self.algorithm} payload of {len(self.data)} bytes has no header")
        return int.from_bytes(self.data[:8], "big")

    def decompress(self, expected: int | None = None) -> bytes:
        from photonstream.codecs import decompress_bytes
        from photonstream.errors import SerializerError

        try:
            return decompress_bytes(
                self.data, self.algorithm, self.elem_size, self.decoded_size if expected is None else expected
            )
        except SerializerError as exc:
            raise Stream2FormatError(str(exc)) from None


@dataclass(slots=True)
class WireArray:
    """A typed array whose bytes are still compressed (decompressed on demand, or kept as EncodedArray).

    ``shape`` is the tag-40 dimensions, or ``(-1,)`` for a bare typed array (length known once decoded).
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    payload: Compressed
    column_major: bool = False

    def to_numpy(self) -> np.ndarray:
        shape = self.shape
        if shape == (-1,):  # a bare typed array: its length is whatever the payload holds
            size = self.payload.decoded_size
            if size % self.dtype.itemsize:
                raise Stream2FormatError(f"{size} bytes is not a whole number of {self.dtype} elements")
            shape = (size // self.dtype.itemsize,)
        expected = math.prod(shape) * self.dtype.itemsize
        flat = np.frombuffer(self.payload.decompress(expected), dtype=self.dtype)
        return flat.reshape(shape, order="F" if self.column_major else "C")

    def to_encoded(self) -> EncodedArray | None:
        """The payload as a photonstream EncodedArray, when our codecs read it as it is."""
        payload = self.payload
        same_layout = payload.algorithm == "lz4" or (
            payload.algorithm == "bslz4" and payload.elem_size == self.dtype.itemsize
        )
        if not same_layout or self.column_major or self.shape == (-1,):
            return None
        return EncodedArray(payload.data, self.dtype.str, self.shape, payload.algorithm)


def _typed_array(tag: int, value: Any) -> np.ndarray | WireArray:
    dtype = TYPED_ARRAY_DTYPES.get(tag)
    if dtype is None:
        raise Stream2FormatError(f"unsupported typed array tag {tag}")
    if isinstance(value, Compressed):  # sizes are checked when (and if) it is decompressed
        return WireArray(dtype, (-1,), value)
    if not isinstance(value, bytes):
        raise Stream2FormatError(f"typed array tag {tag} holds {type(value).__name__}, not a byte string")
    if len(value) % dtype.itemsize:
        raise Stream2FormatError(f"typed array tag {tag}: {len(value)} bytes is not a whole number of elements")
    return np.frombuffer(value, dtype=dtype)


def _multidim(value: Any, column_major: bool) -> np.ndarray | WireArray:
    if not isinstance(value, list | tuple) or len(value) != 2 or not isinstance(value[0], list | tuple):
        raise Stream2FormatError("multi-dimensional array is not [dimensions, array]")
    dims = tuple(value[0])
    if not all(isinstance(n, int) and n >= 0 for n in dims):
        raise Stream2FormatError(f"bad dimensions {list(dims)}")
    contents = value[1]
    order = "F" if column_major else "C"
    if isinstance(contents, WireArray):
        return WireArray(contents.dtype, dims, contents.payload, column_major)
    array = np.asarray(contents) if isinstance(contents, list | tuple) else contents
    if not isinstance(array, np.ndarray) or array.size != math.prod(dims):
        raise Stream2FormatError(f"dims {list(dims)} do not match the array inside")
    return array.reshape(dims, order=order)


def _compressed(value: Any) -> Compressed:
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not isinstance(value[0], str)
        or not isinstance(value[1], int)
        or not isinstance(value[2], bytes)
    ):
        raise Stream2FormatError("compression tag 56500 is not [algorithm, element size, bytes]")
    return Compressed(value[0], value[1], value[2])


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
    number = tag.tag
    if number == TAG_COMPRESSED:
        return _compressed(tag.value)
    if 64 <= number <= 87:
        return _typed_array(number, tag.value)
    if number in (TAG_MULTIDIM, TAG_MULTIDIM_COLUMN_MAJOR):
        return _multidim(tag.value, number == TAG_MULTIDIM_COLUMN_MAJOR)
    return tag


def loads(buf: Any) -> dict[str, Any]:
    """One Stream V2 message as a dict; typed arrays become numpy arrays (compressed ones WireArray)."""
    data = buf if isinstance(buf, bytes) else bytes(buf)
    # Stripped by hand: cbor2 decodes whatever sits inside a tag as immutable (tuples, frozendicts).
    body = data[len(SELF_DESCRIBE) :] if data.startswith(SELF_DESCRIBE) else data
    if not body:
        raise Stream2FormatError("empty message")
    try:
        message = cbor2.loads(body, tag_hook=_tag_hook)
    except Stream2FormatError:
        raise
    except cbor2.CBORDecodeEOF:
        raise Stream2FormatError("truncated CBOR") from None
    except Exception as exc:
        cause = exc.__cause__ if isinstance(exc.__cause__, Stream2FormatError) else exc
        raise Stream2FormatError(f"malformed CBOR ({cause})") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise Stream2FormatError("not a Stream V2 message (no CBOR map with a text 'type')")
    return message


def dumps(message: dict[str, Any], default: Any = None) -> bytes:
    return SELF_DESCRIBE + cbor2.dumps(message, default=default)


# -- spec-only messages to photonstream objects -----------------------------------------------------------


def materialize(value: Any, decompress: bool = True) -> Any:
    """Replace WireArrays (anywhere in a tree) by numpy arrays, or by EncodedArrays when not decompressing."""
    if isinstance(value, WireArray):
        encoded = None if decompress else value.to_encoded()
        return encoded if encoded is not None else value.to_numpy()
    if isinstance(value, dict):
        return {k: materialize(v, decompress) for k, v in value.items()}
    if isinstance(value, list):
        return [materialize(v, decompress) for v in value]
    if isinstance(value, Compressed):
        return value.decompress()
    return value


def _float(message: dict[str, Any], key: str) -> float | None:
    value = message.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def geometry_from_start(start: dict[str, Any]) -> Geometry:
    """Geometry from spec fields; defaults stand in for the ones a detector did not send."""
    geometry = Geometry()
    pixel = _float(start, "pixel_size_x")
    if pixel:
        geometry.pixel_size_m = pixel
    distance = _float(start, "detector_distance")
    translation = start.get("detector_translation")
    if distance is None and isinstance(translation, list) and len(translation) == 3:
        distance = float(translation[2]) or None
    if distance:
        geometry.distance_m = distance
    geometry.beam_center_px = (_float(start, "beam_center_x") or 0.0, _float(start, "beam_center_y") or 0.0)
    energy = _float(start, "incident_energy")
    wavelength = _float(start, "incident_wavelength")
    if energy:
        geometry.photon_energy_ev = energy
    elif wavelength:
        geometry.photon_energy_ev = HC_KEV_ANGSTROM / wavelength
    size_x, size_y = start.get("image_size_x"), start.get("image_size_y")
    if isinstance(size_x, int) and isinstance(size_y, int):
        geometry.detector_shape = (size_y, size_x)
    return geometry


def _channel_map(start: dict[str, Any], key: str) -> dict[str, np.ndarray]:
    value = materialize(start.get(key) or {})
    if not isinstance(value, dict):
        raise Stream2FormatError(f"start field {key!r} is not a map of channel to array")
    return {str(k): v for k, v in value.items() if isinstance(v, np.ndarray)}


def start_arrays(start: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(start arrays, calibration arrays): ``mask`` (nonzero = bad, any channel), per-channel masks when they
    differ, ``flatfield_<channel>`` and the count-rate lookup table."""
    arrays: dict[str, np.ndarray] = {}
    masks = _channel_map(start, "pixel_mask")
    if masks:
        combined = np.zeros_like(next(iter(masks.values())), dtype=np.uint32)
        for mask in masks.values():
            combined |= mask.astype(np.uint32)
        arrays["mask"] = combined
        if len(masks) > 1 and any(not np.array_equal(m, combined) for m in masks.values()):
            arrays.update({f"mask_{channel}": mask for channel, mask in masks.items()})
    calibration = {f"flatfield_{c}": a for c, a in _channel_map(start, "flatfield").items()}
    table = materialize(start.get("countrate_correction_lookup_table"))
    if isinstance(table, np.ndarray):
        calibration["countrate_correction_lookup_table"] = table
    return arrays, calibration


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return _plain(value.value)
    return value


def start_details(start: dict[str, Any]) -> dict[str, Any]:
    """The start's scalar fields (for ``StartMessage.source``), datetimes as ISO text."""
    return {key: _plain(materialize(start[key])) for key in START_DETAIL_FIELDS if key in start}


def _timestamp(image: dict[str, Any]) -> float:
    """Seconds since the epoch of the image start, when the detector sent series_date and start_time."""
    series_date, start_time = image.get("series_date"), image.get("start_time")
    if isinstance(series_date, cbor2.CBORTag):
        series_date = series_date.value
    if isinstance(series_date, str):
        try:
            series_date = datetime.fromisoformat(series_date)
        except ValueError:
            return 0.0
    if not isinstance(series_date, datetime) or not is_rational(start_time):
        return 0.0
    return series_date.timestamp() + start_time[0] / start_time[1]


def is_rational(value: Any) -> bool:
    """A spec Rational: [numerator, denominator], unsigned integers, the denominator not zero."""
    return (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and value[1] > 0
    )


IMAGE_METADATA_FIELDS = ("series_id", "series_unique_id", "image_id", "real_time", "start_time", "stop_time")


def frame_from_image(image: dict[str, Any], channels: Iterable[str] | None = None, decompress: bool = True) -> Frame:
    """A Frame from a spec image message: arrays = channels (all, or the named ones), spec fields as metadata."""
    image_id = image.get("image_id")
    if not isinstance(image_id, int) or image_id < 0:
        raise Stream2FormatError("image message without an unsigned 'image_id'")
    data = image.get("data")
    if not isinstance(data, dict):
        raise Stream2FormatError(f"image {image_id}: 'data' is not a map of channel to array")
    wanted = None if channels is None else set(channels)
    arrays: dict[str, AnyArray] = {}
    for channel, value in data.items():
        if wanted is not None and channel not in wanted:
            continue
        if not isinstance(value, np.ndarray | WireArray):
            raise Stream2FormatError(f"image {image_id}: channel {channel!r} is not a typed array")
        arrays[str(channel)] = materialize(value, decompress)
    metadata = {key: _plain(image[key]) for key in IMAGE_METADATA_FIELDS if key in image}
    if "series_date" in image:
        metadata["series_date"] = _plain(image["series_date"])
    if "user_data" in image:
        metadata["user_data"] = materialize(image["user_data"])
    series_id = image.get("series_id")
    return Frame(
        event=image_id,
        arrays=arrays,
        metadata=metadata,
        timestamp=_timestamp(image),
        stream_id=str(image.get("series_unique_id", "")),
        run=series_id if isinstance(series_id, int) else 0,
    )


def start_message_from_spec(start: dict[str, Any]) -> StartMessage:
    """A StartMessage from a spec start message (a detector's, without photonstream user_data)."""
    arrays, calibration_arrays = start_arrays(start)
    series_id = start.get("series_id")
    return StartMessage(
        stream_id=str(start.get("series_unique_id", "")),
        run=series_id if isinstance(series_id, int) else 0,
        detector=str(start.get("detector_description", "")),
        geometry=geometry_from_start(start),
        calibration=Calibration(identifier="detector" if calibration_arrays else "none", arrays=calibration_arrays),
        arrays=arrays,
        source=start_details(start),
    )
