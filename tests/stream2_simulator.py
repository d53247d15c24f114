"""A simulated DECTRIS detector: Stream V2 messages built from the spec layout with cbor2, bitshuffle and lz4
directly (not with photonstream's serializer or codecs), and a PUSH socket thread that sends them."""

from __future__ import annotations

import struct
import threading
from datetime import UTC, datetime
from typing import Any

import cbor2
import numpy as np
import zmq

MAGIC = bytes.fromhex("d9d9f7")
SERIES_DATE = datetime(2026, 11, 25, 8, 30, tzinfo=UTC)
TIME_BASE = 10_000_000  # ticks per second in the rationals


def typed_tag(dtype: np.dtype) -> int:
    """RFC 8746 tag bits 0b010_f_s_e_ll for a little-endian (or single-byte) numpy dtype."""
    size = dtype.itemsize
    is_float = dtype.kind == "f"
    ll = {2: 0, 4: 1, 8: 2}[size] if is_float else {1: 0, 2: 1, 4: 2, 8: 3}[size]
    little = 0 if size == 1 else 1
    return 0b010_00000 | is_float << 4 | (dtype.kind == "i") << 3 | little << 2 | ll


def bslz4_payload(array: np.ndarray) -> bytes:
    import bitshuffle

    block = max(128, 8192 // array.itemsize // 8 * 8)
    body = bitshuffle.compress_lz4(np.ascontiguousarray(array).reshape(-1), block).tobytes()
    return struct.pack(">QI", array.nbytes, block * array.itemsize) + body


def lz4_payload(array: np.ndarray) -> bytes:
    import lz4.block

    raw = np.ascontiguousarray(array).tobytes()
    block = lz4.block.compress(raw, store_size=False)
    return struct.pack(">QII", len(raw), len(raw), len(block)) + block


def multidim(array: np.ndarray, compression: str | None = None) -> cbor2.CBORTag:
    """A 2-d array as the detector sends it: tag 40 around a typed array, optionally DECTRIS-compressed."""
    assert array.ndim == 2 and array.dtype.byteorder in "<|="
    if compression == "bslz4":
        content: Any = cbor2.CBORTag(56500, ["bslz4", array.itemsize, bslz4_payload(array)])
    elif compression == "lz4":
        content = cbor2.CBORTag(56500, ["lz4", 0, lz4_payload(array)])
    else:
        content = array.tobytes()
    return cbor2.CBORTag(40, [list(array.shape), cbor2.CBORTag(typed_tag(array.dtype), content)])


def encode(message: dict[str, Any]) -> bytes:
    return MAGIC + cbor2.dumps(message)


def start_message(
    series_id: int,
    channels: list[str],
    shape: tuple[int, int],
    mask: np.ndarray,
    image_dtype: str,
    masks: dict[str, np.ndarray] | None = None,
    countrate_table: np.ndarray | None = None,
) -> bytes:
    """A start as a detector sends it with ``header_detail: all``; ``masks`` per channel replace ``mask``."""
    message = start_fields(series_id, channels, shape, mask, image_dtype)
    if masks is not None:
        message["pixel_mask"] = {c: multidim(m.astype(np.uint32), "bslz4") for c, m in masks.items()}
    if countrate_table is not None:
        message["countrate_correction_lookup_table"] = cbor2.CBORTag(
            typed_tag(countrate_table.dtype), countrate_table.tobytes()
        )
    return encode(message)


def start_fields(
    series_id: int, channels: list[str], shape: tuple[int, int], mask: np.ndarray, image_dtype: str
) -> dict[str, Any]:
    return dict(
        {
            "type": "start",
            "series_id": series_id,
            "series_unique_id": f"series-{series_id}",
            "arm_date": SERIES_DATE,
            "beam_center_x": 1012.5,
            "beam_center_y": 1085.25,
            "channels": channels,
            "count_time": 0.0099,
            "countrate_correction_enabled": True,
            "detector_description": "Dectris EIGER2 Si 4M",
            "detector_serial_number": "E-08-0123",
            "detector_translation": [0.0, 0.0, 0.125],
            "flatfield": {c: multidim(np.full(shape, 1.25, np.float32)) for c in channels},
            "flatfield_enabled": True,
            "frame_time": 0.01,
            "goniometer": {"omega": {"increment": 0.1, "start": 10.0}},
            "image_dtype": image_dtype,
            "image_size_x": shape[1],
            "image_size_y": shape[0],
            "incident_energy": 12398.419843320026,  # 1 Å
            "incident_wavelength": 1.0,
            "number_of_images": 3,
            "pixel_mask": {c: multidim(mask.astype(np.uint32), "bslz4") for c in channels},
            "pixel_mask_enabled": True,
            "pixel_size_x": 75e-6,
            "pixel_size_y": 75e-6,
            "saturation_value": 65534,
            "sensor_material": "Si",
            "sensor_thickness": 0.00045,
            "threshold_energy": {c: 6000.0 + 1000.0 * i for i, c in enumerate(channels)},
            "user_data": {"beamline": "X06SA"},
            "virtual_pixel_interpolation_enabled": False,
        }
    )


def image_message(
    series_id: int, image_id: int, data: dict[str, tuple[np.ndarray, str | None]], user_data: Any = None
) -> bytes:
    start = image_id * 100_000
    extra = {} if user_data is None else {"user_data": user_data}
    return encode(
        {
            "type": "image",
            "series_id": series_id,
            "series_unique_id": f"series-{series_id}",
            "image_id": image_id,
            "real_time": [99_000, TIME_BASE],
            "series_date": SERIES_DATE,
            "start_time": [start, TIME_BASE],
            "stop_time": [start + 99_000, TIME_BASE],
            "data": {channel: multidim(array, codec) for channel, (array, codec) in data.items()},
            **extra,
        }
    )


def end_message(series_id: int) -> bytes:
    return encode({"type": "end", "series_id": series_id, "series_unique_id": f"series-{series_id}"})


class SimulatedDetector(threading.Thread):
    """Binds a PUSH socket on a free local port and sends ``messages`` once a client is connected."""

    def __init__(self, messages: list[bytes]) -> None:
        super().__init__(daemon=True)
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.PUSH)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.setsockopt(zmq.SNDTIMEO, 10_000)  # give up if no client ever connects
        port = self.socket.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.messages = messages
        self.sent = 0

    def run(self) -> None:
        try:
            for message in self.messages:  # PUSH blocks until a PULL peer is connected
                self.socket.send(message)
                self.sent += 1
        except (zmq.Again, zmq.ContextTerminated):
            self.socket.close(linger=0)
        else:
            self.socket.close()

    def stop(self) -> None:
        """End the thread now: terminating the context wakes a send still waiting for a client."""
        self.context.term()
        self.join(timeout=10)
