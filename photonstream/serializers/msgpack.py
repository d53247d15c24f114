"""``msgpack``: one msgpack map per message; arrays as {"nd": true, "type": dtype, "shape": [...], "data": bin}.

Arrays compressed by a ``compress`` step carry one more key, ``"codec"`` (bslz4, lz4, zstd), with the codec's bytes
in ``data``.

The array layout is the one msgpack-numpy and CrystFEL's msgpack reader use, so the stream can be read by tools
outside photonstream. Message fields are those of ``Message.to_dict()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import msgpack
import numpy as np

from photonstream.config.base import PluginOptions
from photonstream.errors import SerializerError
from photonstream.frames import EncodedArray, Message, message_from_dict
from photonstream.serializers._tree import contiguous, plain_scalar
from photonstream.serializers.base import Buffer, registry


class MsgpackOptions(PluginOptions):
    type: Literal["msgpack"] = "msgpack"


def _default(obj: Any) -> Any:
    if isinstance(obj, EncodedArray):
        return {"nd": True, "type": obj.dtype, "shape": list(obj.shape), "data": obj.data, "codec": obj.codec}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise TypeError("arrays of Python objects cannot be serialized")
        arr = contiguous(obj)
        return {
            "nd": True,
            "type": arr.dtype.str,
            "shape": list(arr.shape),
            "data": memoryview(arr.reshape(-1).view(np.uint8)) if arr.size else b"",
        }
    value = plain_scalar(obj)
    if value is obj:
        raise TypeError(f"cannot serialize {type(obj).__name__}")
    return value


def _object_hook(d: dict[str, Any]) -> Any:
    if d.get("nd") is True and "data" in d:
        if "codec" in d:
            return EncodedArray(data=d["data"], dtype=d["type"], shape=tuple(d["shape"]), codec=d["codec"])
        return np.frombuffer(d["data"], dtype=np.dtype(d["type"])).reshape(d["shape"])
    return d


@registry.register
class MsgpackSerializer:
    Options: ClassVar[type[PluginOptions]] = MsgpackOptions
    content_type: ClassVar[str] = "application/msgpack"

    def __init__(self, options: MsgpackOptions | None = None) -> None:
        self.options = options or MsgpackOptions()

    def encode(self, message: Message) -> list[Buffer]:
        try:
            return [msgpack.packb(message.to_dict(), default=_default, use_bin_type=True)]
        except (TypeError, ValueError) as exc:
            raise SerializerError(f"msgpack: cannot encode {message.kind} message: {exc}") from None

    def decode(self, frames: Sequence[Buffer]) -> Message:
        if len(frames) != 1:
            raise SerializerError(f"msgpack: expected 1 frame per message, got {len(frames)}")
        try:
            tree = msgpack.unpackb(frames[0], object_hook=_object_hook, raw=False, strict_map_key=False)
            return message_from_dict(tree)
        except Exception as exc:
            raise SerializerError(f"msgpack: malformed or truncated message ({type(exc).__name__}: {exc})") from None
