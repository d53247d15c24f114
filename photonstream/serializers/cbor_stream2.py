"""``cbor-stream2``: DECTRIS Stream V2 messages, readable by DECTRIS-speaking tools, bit-exact for photonstream.

start → ``start`` (geometry in the spec's fields, ``arrays["mask"]`` as ``pixel_mask``), event → ``image``
(``image_id`` = the event index, ``data`` = the event arrays as RFC 8746 arrays, DECTRIS-compressed when they
arrive bslz4/lz4-encoded or when ``compression`` asks), end → ``end``. A ``calibration`` message type carries
calibration updates (a photonstream extension); batches are refused, Stream V2 has one image per message.
Each message keeps its photonstream tree under ``user_data.photonstream``, so ``decode`` rebuilds it exactly;
messages without it (a real detector's) are decoded from the spec fields alone. See docs/stream_v2.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import cbor2
import numpy as np
from pydantic import Field

from photonstream import _stream2
from photonstream._stream2 import DTYPE_TAGS, TAG_COMPRESSED, TAG_MULTIDIM, Stream2FormatError, WireArray
from photonstream.config.base import PluginOptions
from photonstream.errors import SerializerError
from photonstream.frames import (
    AnyArray,
    CalibrationMessage,
    EncodedArray,
    EndMessage,
    Frame,
    FrameBatch,
    Message,
    StartMessage,
    message_from_dict,
)
from photonstream.serializers.base import Buffer, registry

OURS = "photonstream"  # the key of our part of user_data
FORMAT_VERSION = 1
MASK_REFERENCE = "stream2_pixel_mask"  # in our start tree: this array travels as the spec's pixel_mask


class CborStream2Options(PluginOptions):
    type: Literal["cbor-stream2"] = "cbor-stream2"
    compression: Literal["none", "bslz4", "lz4"] = Field(
        "none",
        description="DECTRIS compression for image arrays and the pixel mask that arrive uncompressed "
        "(arrays a compress step encoded as bslz4/lz4 are sent as they are)",
    )
    image_layout: Literal["2d", "native"] = Field(
        "2d",
        description="2d: every image array as [rows, columns] as DECTRIS parsers expect (an N-d array's "
        "leading axes are stacked into rows); native: the array's own dimensions",
    )
    channels: list[str] | None = Field(
        None,
        description="channel names for the start message; default: the source's 'channels' detail, else ['data']",
    )


def _user_array(array: np.ndarray) -> Any:
    """A numpy array inside user_data: an RFC 8746 array, or an nd map for dtypes RFC 8746 has no tag for."""
    if array.dtype.hasobject:
        raise TypeError("arrays of Python objects cannot be serialized")
    data = np.ascontiguousarray(array).tobytes()
    tag = DTYPE_TAGS.get(array.dtype.str)
    if tag is None:
        return {"nd": True, "type": array.dtype.str, "shape": list(array.shape), "data": data}
    return cbor2.CBORTag(TAG_MULTIDIM, [list(array.shape), cbor2.CBORTag(tag, data)])


def _default(encoder: cbor2.CBOREncoder, value: Any) -> None:
    if isinstance(value, np.ndarray):
        encoder.encode(_user_array(value))
    elif isinstance(value, np.generic):
        encoder.encode(value.item())
    else:
        raise TypeError(f"cannot serialize {type(value).__name__}")


def _restore(value: Any) -> Any:
    """Our user_data tree back to Python values and numpy arrays."""
    if isinstance(value, dict):
        if value.get("nd") is True and {"type", "shape", "data"} <= value.keys():
            return np.frombuffer(value["data"], dtype=np.dtype(value["type"])).reshape(value["shape"])
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    if isinstance(value, WireArray):
        return value.to_numpy()
    return value


def _rational(value: Any) -> bool:
    return isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int) for v in value)


@registry.register
class CborStream2Serializer:
    Options: ClassVar[type[PluginOptions]] = CborStream2Options
    content_type: ClassVar[str] = "application/cbor"

    def __init__(self, options: CborStream2Options | None = None) -> None:
        self.options = options or CborStream2Options()
        self._series: tuple[int, str] | None = None  # (series_id, series_unique_id) of the last start

    # -- encoding -------------------------------------------------------------------------------------------
    def encode(self, message: Message) -> list[Buffer]:
        if isinstance(message, FrameBatch):
            raise SerializerError("cbor-stream2: Stream V2 carries one image per message; remove the 'batch' step")
        try:
            if isinstance(message, StartMessage):
                body = self._start(message)
            elif isinstance(message, Frame):
                body = self._image(message)
            else:
                body = self._closing(message)
            return [_stream2.dumps(body, default=_default)]
        except SerializerError:
            raise
        except (TypeError, ValueError, cbor2.CBOREncodeError) as exc:
            raise SerializerError(f"cbor-stream2: cannot encode {message.kind} message: {exc}") from None

    def _series_fields(self, run: int, stream_id: str) -> dict[str, Any]:
        series_id, unique_id = self._series or (run, f"{run}/{stream_id}")
        return {"series_id": series_id, "series_unique_id": unique_id}

    def _dims(self, shape: tuple[int, ...]) -> list[int]:
        if self.options.image_layout == "native":
            return list(shape)
        if len(shape) < 2:
            return [1, shape[0] if shape else 1]
        return [math.prod(shape[:-1]), shape[-1]]

    def _compressed(self, array: np.ndarray) -> Any:
        from photonstream.codecs import bslz4_compress, lz4_compress

        codec = self.options.compression
        if codec == "bslz4":
            return cbor2.CBORTag(TAG_COMPRESSED, ["bslz4", array.dtype.itemsize, bslz4_compress(array)])
        if codec == "lz4":
            return cbor2.CBORTag(TAG_COMPRESSED, ["lz4", 0, lz4_compress(array)])
        return np.ascontiguousarray(array).tobytes()

    def _spec_array(self, value: AnyArray) -> tuple[cbor2.CBORTag, dict[str, Any]]:
        """An image/mask array as tag 40 around a typed array, and what our decoder needs to restore it."""
        codec: str | None = None
        if isinstance(value, EncodedArray) and value.codec in ("bslz4", "lz4"):
            dtype, shape, codec = np.dtype(value.dtype), tuple(value.shape), value.codec
            elem_size = dtype.itemsize if codec == "bslz4" else 0
            payload: Any = cbor2.CBORTag(TAG_COMPRESSED, [codec, elem_size, bytes(value.data)])
        else:  # zstd has no Stream V2 algorithm: such arrays go as plain arrays under this serializer's option
            array = value.decode() if isinstance(value, EncodedArray) else value
            if array.dtype.hasobject:
                raise TypeError("arrays of Python objects cannot be serialized")
            dtype, shape = array.dtype, tuple(array.shape)
            payload = self._compressed(array)
        tag = DTYPE_TAGS.get(dtype.str)
        wire_shape = shape
        if tag is None:  # no typed-array tag for this dtype: its bytes as uint8, item size as a last axis
            tag = DTYPE_TAGS["|u1"]
            wire_shape = (*shape, dtype.itemsize) if dtype.itemsize > 1 else shape
        item = cbor2.CBORTag(TAG_MULTIDIM, [self._dims(wire_shape), cbor2.CBORTag(tag, payload)])
        return item, {"dtype": dtype.str, "shape": list(shape), "codec": codec}

    def _channels(self, message: StartMessage) -> list[str]:
        if self.options.channels:
            return list(self.options.channels)
        listed = message.source.get("channels")
        if isinstance(listed, list) and listed and all(isinstance(c, str) for c in listed):
            return list(listed)
        return ["data"]

    def _start(self, message: StartMessage) -> dict[str, Any]:
        geometry = message.geometry
        series_id = message.run
        unique_id = "/".join(str(p) for p in (message.experiment, message.run, message.stream_id) if p != "")
        self._series = (series_id, unique_id)
        channels = self._channels(message)
        body: dict[str, Any] = {"type": "start", "series_id": series_id, "series_unique_id": unique_id}
        if message.created_ns:
            body["arm_date"] = datetime.fromtimestamp(message.created_ns / 1e9, tz=UTC)
        body["beam_center_x"] = float(geometry.beam_center_px[0])
        body["beam_center_y"] = float(geometry.beam_center_px[1])
        body["channels"] = channels
        body["detector_description"] = message.detector
        body["detector_distance"] = float(geometry.distance_m)
        body["detector_translation"] = [0.0, 0.0, float(geometry.distance_m)]
        if geometry.detector_shape:
            rows, columns = self._dims_2d(geometry.detector_shape)
            body["image_size_x"], body["image_size_y"] = columns, rows
        body["incident_energy"] = float(geometry.photon_energy_ev)
        body["incident_wavelength"] = geometry.wavelength_m * 1e10
        body["pixel_size_x"] = body["pixel_size_y"] = float(geometry.pixel_size_m)
        body.update(_passthrough(message.source))
        tree = message.to_dict()
        mask = message.arrays.get("mask")
        if mask is not None and _fits_uint32(mask):
            item, _ = self._spec_array(mask.astype(np.uint32))
            body["pixel_mask"] = dict.fromkeys(channels, item)
            body["pixel_mask_enabled"] = True
            tree["arrays"] = dict(tree["arrays"])
            tree["arrays"]["mask"] = {MASK_REFERENCE: channels[0], "dtype": mask.dtype.str, "shape": list(mask.shape)}
        body["user_data"] = {OURS: {"version": FORMAT_VERSION, "message": tree}}
        return body

    @staticmethod
    def _dims_2d(shape: tuple[int, ...]) -> tuple[int, int]:
        if len(shape) == 1:
            return 1, shape[0]
        return math.prod(shape[:-1]), shape[-1]

    def _image(self, frame: Frame) -> dict[str, Any]:
        if frame.event < 0:
            raise SerializerError(f"cbor-stream2: image_id must be unsigned, event index is {frame.event}")
        body: dict[str, Any] = {"type": "image", **self._series_fields(frame.run, frame.stream_id)}
        body["image_id"] = frame.event
        for key in ("real_time", "start_time", "stop_time"):  # carried through from a Stream V2 source
            if _rational(frame.metadata.get(key)):
                body[key] = list(frame.metadata[key])
        series_date = _aware_datetime(frame.metadata.get("series_date"))
        if series_date is not None:
            body["series_date"] = series_date
        data: dict[str, Any] = {}
        restore: dict[str, Any] = {}
        for name, value in frame.arrays.items():
            data[name], restore[name] = self._spec_array(value)
        body["data"] = data
        tree = frame.to_dict()
        del tree["arrays"]
        body["user_data"] = {OURS: {"version": FORMAT_VERSION, "message": tree, "arrays": restore}}
        return body

    def _closing(self, message: CalibrationMessage | EndMessage) -> dict[str, Any]:
        kind = "calibration" if isinstance(message, CalibrationMessage) else "end"
        body: dict[str, Any] = {"type": kind, **self._series_fields(0, message.stream_id)}
        body["user_data"] = {OURS: {"version": FORMAT_VERSION, "message": message.to_dict()}}
        return body

    # -- decoding -------------------------------------------------------------------------------------------
    def decode(self, frames: Sequence[Buffer]) -> Message:
        if len(frames) != 1:
            raise SerializerError(f"cbor-stream2: expected 1 frame per message, got {len(frames)}")
        try:
            return self._message(_stream2.loads(frames[0]))
        except SerializerError as exc:
            text = str(exc)
            raise SerializerError(text if text.startswith("cbor-stream2") else f"cbor-stream2: {text}") from None
        except Stream2FormatError as exc:
            raise SerializerError(f"cbor-stream2: {exc}") from None
        except KeyError as exc:
            raise SerializerError(f"cbor-stream2: message lacks field {exc}") from None
        except Exception as exc:
            raise SerializerError(f"cbor-stream2: malformed message ({type(exc).__name__}: {exc})") from None

    def _message(self, body: dict[str, Any]) -> Message:
        kind = body["type"]
        ours = _our_part(body)
        if ours is None:
            if kind == "start":
                return _stream2.start_message_from_spec(body)
            if kind == "image":
                return _stream2.frame_from_image(body)
            if kind == "end":
                return EndMessage(stream_id=str(body.get("series_unique_id", "")))
            raise Stream2FormatError(f"unknown message type {kind!r}")
        tree = _restore(ours["message"])
        if kind == "image":
            data = body["data"]
            tree["arrays"] = {name: _array_back(data[name], spec) for name, spec in ours["arrays"].items()}
        elif kind == "start":
            tree["arrays"] = {name: _start_array_back(body, value) for name, value in tree["arrays"].items()}
        return message_from_dict(tree)


def _aware_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _our_part(body: dict[str, Any]) -> dict[str, Any] | None:
    user_data = body.get("user_data")
    ours = user_data.get(OURS) if isinstance(user_data, dict) else None
    if not isinstance(ours, dict) or "message" not in ours:
        return None
    if ours.get("version") != FORMAT_VERSION:
        raise Stream2FormatError(f"user_data format version {ours.get('version')!r} is not {FORMAT_VERSION}")
    return ours


def _array_back(item: Any, spec: dict[str, Any]) -> AnyArray:
    dtype, shape, codec = np.dtype(spec["dtype"]), tuple(spec["shape"]), spec.get("codec")
    expected = math.prod(shape) * dtype.itemsize
    if isinstance(item, WireArray):
        if codec is not None:
            return EncodedArray(item.payload.data, dtype.str, shape, codec)
        return np.frombuffer(item.payload.decompress(expected), dtype=dtype).reshape(shape)
    if not isinstance(item, np.ndarray) or item.nbytes != expected:
        raise Stream2FormatError(f"array does not match its recorded {dtype} {list(shape)}")
    return item.reshape(-1).view(np.uint8).view(dtype).reshape(shape)


def _start_array_back(body: dict[str, Any], value: Any) -> Any:
    if not (isinstance(value, dict) and MASK_REFERENCE in value):
        return value
    mask = _stream2.materialize(body["pixel_mask"][value[MASK_REFERENCE]])
    return mask.astype(np.dtype(value["dtype"])).reshape(value["shape"])


def _fits_uint32(mask: np.ndarray) -> bool:
    """Whether the mask's values are those of the spec's uint32 pixel_mask (so the trip is exact)."""
    if mask.dtype.kind == "b":
        return True
    if mask.dtype.kind not in "iu":
        return False
    return mask.size == 0 or (int(mask.min()) >= 0 and int(mask.max()) <= 0xFFFFFFFF)


def _passthrough(source: dict[str, Any]) -> dict[str, Any]:
    """Spec start fields a Stream V2 source recorded, converted to the spec's types; others are dropped."""
    fields: dict[str, Any] = {}
    for keys, convert in (
        (_stream2.PASSTHROUGH_FLOAT, float),
        (_stream2.PASSTHROUGH_BOOL, bool),
        (_stream2.PASSTHROUGH_INT, int),
        (_stream2.PASSTHROUGH_TEXT, str),
    ):
        for key in keys:
            if key in source and isinstance(source[key], int | float | str | bool):
                try:
                    fields[key] = convert(source[key])
                except ValueError:
                    continue
    energies = source.get("threshold_energy")
    if isinstance(energies, dict) and all(isinstance(v, int | float) for v in energies.values()):
        fields["threshold_energy"] = {str(k): float(v) for k, v in energies.items()}
    goniometer = source.get("goniometer")
    if isinstance(goniometer, dict):
        axes = {
            str(axis): {k: float(v) for k, v in spec.items() if k in ("start", "increment")}
            for axis, spec in goniometer.items()
            if isinstance(spec, dict) and all(isinstance(v, int | float) for v in spec.values())
        }
        if axes:
            fields["goniometer"] = axes
    return fields
