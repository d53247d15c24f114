"""The messages a stream carries: one start, events (single or batched), calibration updates, one end.

Everything else in photonstream (serializers, handlers, the buffer, consumers) speaks these classes; nothing
defines its own frame dict. ``to_dict``/``from_dict`` give a plain tree of str/int/float/bool/None/list/dict and
numpy arrays that every serializer knows how to write.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

EndReason = Literal["completed", "cancelled", "failed"]


def now_ns() -> int:
    return time.time_ns()


@dataclass(slots=True)
class EncodedArray:
    """A compressed array as it travels: the codec's bytes plus what is needed to restore it bit-exactly.

    ``codec`` is one of ``photonstream.codecs.CODECS`` (``bslz4``: bitshuffle+LZ4 in the HDF5-filter/DECTRIS
    framing; ``lz4``; ``zstd``). ``frame.array(name)`` or ``photonstream.codecs.decode_array`` gives the numpy array.
    """

    data: bytes
    dtype: str  # numpy dtype string, e.g. '<u2'
    shape: tuple[int, ...]
    codec: str

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def decode(self) -> np.ndarray:
        from photonstream.codecs import decode_array

        return decode_array(self)


AnyArray = np.ndarray | EncodedArray


@dataclass(slots=True)
class Geometry:
    """Experiment geometry a consumer needs to interpret pixels (SI units, beam centre in pixels)."""

    pixel_size_m: float = 100e-6
    distance_m: float = 0.1
    beam_center_px: tuple[float, float] = (0.0, 0.0)  # (x = fast axis, y = slow axis)
    photon_energy_ev: float = 9500.0
    detector_shape: tuple[int, ...] = ()

    @property
    def wavelength_m(self) -> float:
        return 1.239841984e-6 / self.photon_energy_ev

    def to_dict(self) -> dict[str, Any]:
        return {
            "pixel_size_m": self.pixel_size_m,
            "distance_m": self.distance_m,
            "beam_center_px": list(self.beam_center_px),
            "photon_energy_ev": self.photon_energy_ev,
            "wavelength_m": self.wavelength_m,
            "detector_shape": list(self.detector_shape),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        return cls(
            pixel_size_m=float(d["pixel_size_m"]),
            distance_m=float(d["distance_m"]),
            beam_center_px=(float(d["beam_center_px"][0]), float(d["beam_center_px"][1])),
            photon_energy_ev=float(d["photon_energy_ev"]),
            detector_shape=tuple(int(n) for n in d.get("detector_shape", ())),
        )


@dataclass(slots=True)
class Calibration:
    """Calibration constants in force: an identifier consumers can cite, inline arrays and/or references."""

    identifier: str = "none"
    version: int = 0
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    references: dict[str, str] = field(default_factory=dict)  # e.g. {"pedestal": "/path/pedestal.npy"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "identifier": self.identifier,
            "version": self.version,
            "arrays": dict(self.arrays),
            "references": dict(self.references),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            identifier=str(d["identifier"]),
            version=int(d["version"]),
            arrays=dict(d.get("arrays") or {}),
            references=dict(d.get("references") or {}),
        )


@dataclass(slots=True)
class Frame:
    """One detector event: named arrays plus scalar/array metadata (ground truth, peak lists, outcomes)."""

    kind: ClassVar[str] = "event"
    event: int
    arrays: dict[str, AnyArray]
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: float = 0.0  # when the event happened (s since the epoch)
    stream_id: str = ""
    run: int = 0
    seq: int = -1  # per-stream sequence number, assigned by the pipeline
    created_ns: int = 0  # when the pipeline emitted it; consumers measure latency against it

    def array(self, name: str) -> np.ndarray:
        """The named array, decompressed if a ``compress`` step encoded it."""
        value = self.arrays[name]
        return value.decode() if isinstance(value, EncodedArray) else value

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "event",
            "stream_id": self.stream_id,
            "run": self.run,
            "event": self.event,
            "seq": self.seq,
            "timestamp": self.timestamp,
            "created_ns": self.created_ns,
            "arrays": self.arrays,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Frame:
        return cls(
            event=int(d["event"]),
            arrays=dict(d["arrays"]),
            metadata=dict(d.get("metadata") or {}),
            timestamp=float(d.get("timestamp", 0.0)),
            stream_id=str(d.get("stream_id", "")),
            run=int(d.get("run", 0)),
            seq=int(d.get("seq", -1)),
            created_ns=int(d.get("created_ns", 0)),
        )


@dataclass(slots=True)
class FrameBatch:
    """Several events sent as one message (the ``batch`` step); ``seq`` numbers the message."""

    kind: ClassVar[str] = "batch"
    frames: list[Frame]
    stream_id: str = ""
    seq: int = -1
    created_ns: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "batch",
            "stream_id": self.stream_id,
            "seq": self.seq,
            "created_ns": self.created_ns,
            "frames": [f.to_dict() for f in self.frames],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameBatch:
        return cls(
            frames=[Frame.from_dict(f) for f in d["frames"]],
            stream_id=str(d.get("stream_id", "")),
            seq=int(d.get("seq", -1)),
            created_ns=int(d.get("created_ns", 0)),
        )


@dataclass(slots=True)
class StartMessage:
    """Opens a stream: what it is, the geometry and calibration in force, and the pipeline that makes it."""

    kind: ClassVar[str] = "start"
    stream_id: str
    experiment: str = ""
    run: int = 0
    detector: str = ""
    geometry: Geometry = field(default_factory=Geometry)
    calibration: Calibration = field(default_factory=Calibration)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. pixel mask
    pipeline: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)  # what the source says about itself
    serializer: str = ""
    created_ns: int = 0
    seq: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "start",
            "stream_id": self.stream_id,
            "experiment": self.experiment,
            "run": self.run,
            "detector": self.detector,
            "geometry": self.geometry.to_dict(),
            "calibration": self.calibration.to_dict(),
            "arrays": self.arrays,
            "pipeline": self.pipeline,
            "source": self.source,
            "serializer": self.serializer,
            "created_ns": self.created_ns,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StartMessage:
        return cls(
            stream_id=str(d["stream_id"]),
            experiment=str(d.get("experiment", "")),
            run=int(d.get("run", 0)),
            detector=str(d.get("detector", "")),
            geometry=Geometry.from_dict(d["geometry"]),
            calibration=Calibration.from_dict(d["calibration"]),
            arrays=dict(d.get("arrays") or {}),
            pipeline=dict(d.get("pipeline") or {}),
            source=dict(d.get("source") or {}),
            serializer=str(d.get("serializer", "")),
            created_ns=int(d.get("created_ns", 0)),
            seq=int(d.get("seq", -1)),
        )


@dataclass(slots=True)
class CalibrationMessage:
    """New calibration constants that apply to events with index >= ``from_event``."""

    kind: ClassVar[str] = "calibration"
    stream_id: str
    calibration: Calibration
    from_event: int
    created_ns: int = 0
    seq: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "calibration",
            "stream_id": self.stream_id,
            "calibration": self.calibration.to_dict(),
            "from_event": self.from_event,
            "created_ns": self.created_ns,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationMessage:
        return cls(
            stream_id=str(d["stream_id"]),
            calibration=Calibration.from_dict(d["calibration"]),
            from_event=int(d["from_event"]),
            created_ns=int(d.get("created_ns", 0)),
            seq=int(d.get("seq", -1)),
        )


@dataclass(slots=True)
class EndMessage:
    """Closes a stream: how many events went out, counts per outcome, and why it ended."""

    kind: ClassVar[str] = "end"
    stream_id: str
    events_sent: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"read": 100, "hit": 12, "dropped": 88}
    reason: EndReason = "completed"
    error: str = ""
    created_ns: int = 0
    seq: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "end",
            "stream_id": self.stream_id,
            "events_sent": self.events_sent,
            "counts": dict(self.counts),
            "reason": self.reason,
            "error": self.error,
            "created_ns": self.created_ns,
            "seq": self.seq,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EndMessage:
        return cls(
            stream_id=str(d["stream_id"]),
            events_sent=int(d["events_sent"]),
            counts={str(k): int(v) for k, v in (d.get("counts") or {}).items()},
            reason=d.get("reason", "completed"),
            error=str(d.get("error", "")),
            created_ns=int(d.get("created_ns", 0)),
            seq=int(d.get("seq", -1)),
        )


Message = StartMessage | Frame | FrameBatch | CalibrationMessage | EndMessage

MESSAGE_TYPES: dict[str, type] = {
    "start": StartMessage,
    "event": Frame,
    "batch": FrameBatch,
    "calibration": CalibrationMessage,
    "end": EndMessage,
}


def message_from_dict(d: dict[str, Any]) -> Message:
    """Rebuild a message from its ``to_dict`` tree; raises KeyError/ValueError on a malformed one."""
    try:
        cls = MESSAGE_TYPES[d["type"]]
    except KeyError as exc:
        raise ValueError(f"unknown message type {d.get('type')!r}") from exc
    return cls.from_dict(d)  # type: ignore[attr-defined,no-any-return]
