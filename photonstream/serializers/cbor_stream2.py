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
from photonstream.serializers import _stream2_fields as fields
from photonstream.serializers.base import Buffer, registry

OURS = "photonstream"  # the key of our part of user_data
FORMAT_VERSION = 2  # 2: arrays that are not declared channels travel in our user_data ("extra")
READABLE_VERSIONS = (1, 2)
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
        self._channel_names: list[str] = []
        self._image_dtype: str | None = None
        self._start_dims: list[int] | None = None
        self._last_image: dict[str, tuple[str, list[int]]] = {}  # channel -> (dtype, wire dims) last sent
        self._nodata_cache: dict[str, tuple[tuple[str, tuple[int, ...]], cbor2.CBORTag]] = {}  # by channel
        self._clock = fields.ImageClock({}, None)

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
        details, geometry = message.source, message.geometry
        our_unique_id = "/".join(str(p) for p in (message.experiment, message.run, message.stream_id) if p != "")
        series_id, unique_id = fields.relayed_series(details) or (message.run, our_unique_id)
        self._series = (series_id, unique_id)
        channels = self._channels(message)
        self._channel_names = channels
        self._last_image = {}
        body: dict[str, Any] = {"type": "start", "series_id": series_id, "series_unique_id": unique_id}
        armed = fields.arm_date(details, message.created_ns)
        if armed is not None:
            body["arm_date"] = armed
        body.update(fields.geometry_fields(geometry, self._dims_2d))
        body.update(fields.relayed_geometry(details, geometry))
        body["channels"] = channels
        body["detector_description"] = message.detector
        body.update(fields.detector_fields(details))
        expected = details.get("expected_events")
        if "number_of_images" not in body and isinstance(expected, int) and expected >= 0:
            body["number_of_images"] = expected
        self._image_dtype = body.get("image_dtype")
        self._start_dims = self._dims(tuple(geometry.detector_shape)) if geometry.detector_shape else None
        self._clock = fields.ImageClock(details, armed)
        tree = message.to_dict()
        tree["arrays"] = dict(tree["arrays"])
        masks = fields.channel_masks(message.arrays, channels)
        if masks:
            body["pixel_mask"] = {c: self._spec_array(m.astype(np.uint32))[0] for c, m in masks.items()}
        for name, array in message.arrays.items():  # masks that travel as a channel's pixel_mask are not repeated
            channel = next((c for c, m in masks.items() if m is array), None)
            if channel is not None:
                tree["arrays"][name] = {MASK_REFERENCE: channel, "dtype": array.dtype.str, "shape": list(array.shape)}
        body.setdefault("pixel_mask_enabled", bool(masks))
        calibration = message.calibration.arrays
        flatfields = fields.channel_flatfields(calibration, channels)
        if flatfields:
            body["flatfield"] = {c: self._spec_array(a)[0] for c, a in flatfields.items()}
        body.setdefault("flatfield_enabled", False)
        table = calibration.get("countrate_correction_lookup_table")
        if isinstance(table, np.ndarray) and table.ndim == 1 and table.dtype.str in DTYPE_TAGS:
            body["countrate_correction_lookup_table"] = cbor2.CBORTag(DTYPE_TAGS[table.dtype.str], table.tobytes())
        body.setdefault("countrate_correction_enabled", False)
        ours = {"version": FORMAT_VERSION, "message": tree}
        body["user_data"] = fields.with_ours(details.get("user_data"), ours, OURS)
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
        body.update(self._clock.fields(frame))
        channels = self._channel_names or ["data"]
        encoded: dict[str, Any] = {}
        restore: dict[str, Any] = {}
        for name, value in frame.arrays.items():
            encoded[name], restore[name] = self._spec_array(value)
        data: dict[str, Any] = {}
        for channel in channels:  # the spec: image channel data in the order of the start's channels
            if channel in encoded:
                data[channel] = encoded[channel]
                self._last_image[channel] = (restore[channel]["dtype"], encoded[channel].value[0])
            else:  # vetoed, or a channel this frame lacks: an image of NODATA pixels, as a detector marks them
                data[channel] = self._nodata(channel)
        body["data"] = data
        tree = frame.to_dict()
        del tree["arrays"]
        ours: dict[str, Any] = {"version": FORMAT_VERSION, "message": tree}
        ours["arrays"] = {name: spec for name, spec in restore.items() if name in data}
        extra = {name: {"array": encoded[name], **spec} for name, spec in restore.items() if name not in data}
        if extra:
            ours["extra"] = extra
        body["user_data"] = fields.with_ours(frame.metadata.get("user_data"), ours, OURS)
        return body

    def _nodata(self, channel: str) -> cbor2.CBORTag:
        """bslz4-compressed (a few bytes per block whatever the compression option), cached per channel."""
        from photonstream.codecs import bslz4_compress

        dtype_name, dims = self._last_image.get(channel, (None, None))
        if dtype_name is None:
            dtype_name = np.dtype(self._image_dtype or "uint16").str
            dims = list(self._start_dims) if self._start_dims else [0, 0]
        key = (dtype_name, tuple(dims))
        cached = self._nodata_cache.get(channel)
        if cached is None or cached[0] != key:  # one per channel: channels may differ in dtype and size
            dtype = np.dtype(dtype_name)
            payload = ["bslz4", dtype.itemsize, bslz4_compress(fields.nodata(dtype, dims))]
            typed = cbor2.CBORTag(DTYPE_TAGS[dtype.str], cbor2.CBORTag(TAG_COMPRESSED, payload))
            cached = self._nodata_cache[channel] = (key, cbor2.CBORTag(TAG_MULTIDIM, [list(dims), typed]))
        return cached[1]

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
            for name, spec in (ours.get("extra") or {}).items():
                tree["arrays"][name] = _array_back(spec["array"], spec)
        elif kind == "start":
            tree["arrays"] = {name: _start_array_back(body, value) for name, value in tree["arrays"].items()}
        return message_from_dict(tree)


def _our_part(body: dict[str, Any]) -> dict[str, Any] | None:
    user_data = body.get("user_data")
    ours = user_data.get(OURS) if isinstance(user_data, dict) else None
    if not isinstance(ours, dict) or "message" not in ours:
        return None
    if ours.get("version") not in READABLE_VERSIONS:
        raise Stream2FormatError(f"user_data format version {ours.get('version')!r} is not one of {READABLE_VERSIONS}")
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
