"""The Source protocol and registry.

A source is created from its validated Options, opened once (``open`` returns what the start message needs:
detector name, geometry, calibration, a mask), then iterated (``events``) and closed. It yields ``Frame`` objects
with ``event`` (the index within the run), ``timestamp``, ``arrays`` and ``metadata`` filled in; the pipeline
assigns stream id, run and sequence numbers. Sources raise ``SourceError`` with one readable line for input they
cannot read. Heavy imports (psana, ...) happen inside ``open``, never at module import. A source may also have
``outcome_counts()``: outcomes only it sees (events skipped for a missing field, frames a detector or IOC dropped
before they reached us), added to the end message's counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from photonstream.config.base import PluginOptions
from photonstream.frames import Calibration, Frame, Geometry
from photonstream.registry import Registry


@dataclass(slots=True)
class SourceInfo:
    """What a source knows once opened; it goes into the stream's start message."""

    detector: str = ""
    geometry: Geometry = field(default_factory=Geometry)
    calibration: Calibration = field(default_factory=Calibration)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"mask": ...}
    expected_events: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Shard:
    """Which share of the events this process reads (MPI ranks split a run): events i with i % size == rank."""

    rank: int = 0
    size: int = 1

    def owns(self, index: int) -> bool:
        return index % self.size == self.rank


@runtime_checkable
class Source(Protocol):
    Options: ClassVar[type[PluginOptions]]

    def open(self) -> SourceInfo: ...

    def events(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


def outcome_counts(source: Source) -> dict[str, int]:
    """The source's own outcome counts (``outcome_counts()``, optional), non-negative integers only."""
    counts = getattr(source, "outcome_counts", None)
    if counts is None:
        return {}
    return {str(key): int(value) for key, value in counts().items() if int(value) > 0}


registry: Registry[Source] = Registry("source", "photonstream.sources")
