"""How workers' results travel to the merger over ZeroMQ: msgpack maps, numpy arrays as (dtype, shape, bytes)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_ARRAY = "__ndarray__"


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        array = np.ascontiguousarray(value)
        return {_ARRAY: [array.dtype.str, list(array.shape), array.tobytes()]}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot send {type(value).__name__} in a result")


def _decode(value: dict[str, Any]) -> Any:
    if _ARRAY in value and len(value) == 1:
        dtype, shape, data = value[_ARRAY]
        return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape).copy()
    return value


def pack(record: dict[str, Any]) -> bytes:
    return msgpack.packb(record, default=_encode, use_bin_type=True)


def unpack(payload: bytes) -> dict[str, Any]:
    return msgpack.unpackb(payload, object_hook=_decode, raw=False, strict_map_key=False)
