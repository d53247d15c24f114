"""Builders of messages for tests, comparison of decoded messages with what was sent, and the rule for cases that
need privileges."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from photonstream.frames import (
    Calibration,
    CalibrationMessage,
    EncodedArray,
    EndMessage,
    Frame,
    FrameBatch,
    Geometry,
    StartMessage,
)


def sample_frame(event: int = 7, shape: tuple[int, ...] = (2, 16, 24), dtype: str = "<u2", seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed + event)
    data = rng.integers(0, 5000, size=shape).astype(dtype)
    return Frame(
        event=event,
        arrays={"data": data, "spectrum": rng.normal(size=64).astype(">f8")},
        metadata={
            "hit": bool(event % 2),
            "n_peaks": np.int32(12),
            "photon_energy_ev": 9500.5,
            "label": "shot",
            "orientation": rng.normal(size=(3, 3)),
            "peaks": rng.normal(size=(5, 3)).astype(np.float32),
            "tags": [1, 2, "three"],
            "nested": {"a": 1, "b": [0.5, None]},
        },
        timestamp=1_700_000_000.123456,
        stream_id="epix",
        run=42,
        seq=event + 1,
        created_ns=1_700_000_000_123_456_789,
    )


def sample_start() -> StartMessage:
    return StartMessage(
        stream_id="epix",
        experiment="xpptut15",
        run=42,
        detector="epix10k2m",
        geometry=Geometry(100e-6, 0.1, (768.5, 704.25), 9500.0, (16, 352, 384)),
        calibration=Calibration(
            identifier="ped-2026-11-25",
            version=1,
            arrays={"gain": np.full((2, 2), 1.5, np.float32)},
            references={"pedestal": "/data/ped.npy"},
        ),
        arrays={"mask": np.eye(4, dtype=np.uint8)},
        pipeline={"source": {"type": "synthetic-diffraction"}, "steps": []},
        source={"seed": 3},
        serializer="msgpack",
        created_ns=5,
        seq=0,
    )


def sample_messages() -> list[Any]:
    frames = [sample_frame(i) for i in range(3)]
    encoded = sample_frame(9)
    raw = np.arange(64, dtype="<u2").reshape(8, 8)
    encoded.arrays["data"] = EncodedArray(data=raw.tobytes(), dtype="<u2", shape=(8, 8), codec="lz4")
    return [
        sample_start(),
        *frames,
        CalibrationMessage("epix", Calibration("ped-2", 2, {"pedestal": np.ones(3)}, {}), from_event=2, seq=4),
        FrameBatch(frames=[sample_frame(10), sample_frame(11)], stream_id="epix", seq=5, created_ns=9),
        encoded,
        EndMessage("epix", events_sent=3, counts={"read": 3, "hit": 1}, reason="completed", seq=6),
    ]


def assert_same(a: Any, b: Any, path: str = "") -> None:
    """Deep equality where numpy arrays must match in dtype, shape and every byte."""
    if isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), f"{path}: {type(b)} is not an array"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {b.dtype}{b.shape} != {a.dtype}{a.shape}"
        assert a.tobytes() == b.tobytes(), f"{path}: array bytes differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(b)} != {sorted(a)}"
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), f"{path}: length {len(b)} != {len(a)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, EncodedArray):
        assert isinstance(b, EncodedArray) and (a.data, a.dtype, tuple(a.shape), a.codec) == (
            b.data,
            b.dtype,
            tuple(b.shape),
            b.codec,
        ), f"{path}: encoded arrays differ"
    else:
        expected = a.item() if isinstance(a, np.generic) else a
        assert expected == b and type(b) is type(expected), f"{path}: {b!r} != {a!r}"


def assert_same_message(sent: Any, got: Any) -> None:
    assert type(got) is type(sent)
    assert_same(sent.to_dict(), got.to_dict(), sent.kind)


def require_privileges(reason: str | None, what: str = "network namespaces") -> None:
    """Nothing when ``reason`` (why ``what`` cannot be used here) is None; else skip the case with it, or fail it
    where ``PHOTONSTREAM_REQUIRE_NETNS=1`` (CI, where the privileged cases must run)."""
    if reason is None:
        return
    if os.environ.get("PHOTONSTREAM_REQUIRE_NETNS") == "1":
        pytest.fail(f"{what} are required here (PHOTONSTREAM_REQUIRE_NETNS=1): {reason}")
    pytest.skip(f"{what} unavailable: {reason}")
