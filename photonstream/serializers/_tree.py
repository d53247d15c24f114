"""Helpers shared by serializers: numpy-aware conversion of message trees to plain values."""

from __future__ import annotations

from typing import Any

import numpy as np


def plain_scalar(value: Any) -> Any:
    """numpy scalars to Python scalars; tuples to lists; anything else unchanged."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    return value


def contiguous(array: np.ndarray) -> np.ndarray:
    """A C-contiguous view or copy with a native or explicit byte order, ready to be sent as raw bytes."""
    return array if array.flags.c_contiguous else np.ascontiguousarray(array)
