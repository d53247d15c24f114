"""XTC2 file facts without psana: a cheap header check, an event count, and psana's timestamp → Unix seconds.

psana crashes the whole process (segmentation fault) on some non-XTC2 input, such as an HDF5 file, so the
``psana`` source checks every file here first and bad input never reaches psana.

An XTC2 file is a chain of datagrams. Each starts with a 24-byte little-endian header: the timestamp (uint64:
seconds since 1990-01-01 in the high 32 bits, nanoseconds in the low 32), ``env`` (uint32, the transition id in
bits 24-27), then the top-level Xtc: source (uint32), damage (uint16), contained type (uint16) and ``extent``
(uint32, the size of that Xtc including its 12-byte header). A datagram therefore takes ``12 + extent`` bytes, and
a file starts with a Configure transition.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

EPICS_EPOCH_UNIX_S = 631_152_000  # 1990-01-01T00:00:00Z, where LCLS timestamps count from
HEADER = struct.Struct("<QIIHHI")
XTC_HEADER_BYTES = 12
CONFIGURE = 2
BEGIN_RUN = 4
L1ACCEPT = 12
LAST_TRANSITION_ID = 12
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_WALKED_DATAGRAMS = 200_000  # beyond this a file's event count is reported as unknown


class NotXtc2Error(ValueError):
    """The file is not a readable XTC2 file; the message says why (without the path)."""


@dataclass(frozen=True, slots=True)
class Xtc2Scan:
    """What the header walk found: L1Accept events and BeginRun transitions (None when the walk stopped
    early), and whether the file ends inside a datagram."""

    path: Path
    size: int
    events: int | None
    runs: int | None
    truncated: bool


def to_unix_seconds(psana_timestamp: int) -> float:
    """psana's 64-bit event timestamp → seconds since the Unix epoch."""
    return (psana_timestamp >> 32) + EPICS_EPOCH_UNIX_S + (psana_timestamp & 0xFFFFFFFF) * 1e-9


def scan_xtc2(path: Path, walk: bool = True) -> Xtc2Scan:
    """Check that ``path`` starts with a complete Configure datagram and, with ``walk``, follow the datagram
    chain to count L1Accept events. Raises ``NotXtc2Error`` (file content) or ``OSError`` (file access)."""
    size = path.stat().st_size
    with path.open("rb", buffering=0) as f:
        first = f.read(HEADER.size)
        if first[: len(HDF5_MAGIC)] == HDF5_MAGIC:
            raise NotXtc2Error("is an HDF5 file, not XTC2")
        if len(first) < HEADER.size:
            raise NotXtc2Error(f"is too short to be XTC2 ({size} bytes)")
        _, env, _, _, _, extent = HEADER.unpack(first)
        service = (env >> 24) & 0xF
        if service != CONFIGURE or extent < XTC_HEADER_BYTES:
            raise NotXtc2Error("is not XTC2 (it does not start with a Configure datagram)")
        offset = XTC_HEADER_BYTES + extent
        if offset > size:
            raise NotXtc2Error(f"is truncated inside its Configure datagram ({size} of {offset} bytes)")
        if not walk:
            return Xtc2Scan(path, size, None, None, truncated=False)
        events = runs = 0
        for _ in range(MAX_WALKED_DATAGRAMS):
            if offset == size:
                return Xtc2Scan(path, size, events, runs, truncated=False)
            header = os.pread(f.fileno(), HEADER.size, offset)
            if len(header) < HEADER.size:
                return Xtc2Scan(path, size, events, runs, truncated=True)
            _, env, _, _, _, extent = HEADER.unpack(header)
            service = (env >> 24) & 0xF
            if extent < XTC_HEADER_BYTES or service > LAST_TRANSITION_ID:
                raise NotXtc2Error(f"is corrupt at byte {offset} (not a datagram header)")
            if offset + XTC_HEADER_BYTES + extent > size:
                return Xtc2Scan(path, size, events, runs, truncated=True)
            if service == L1ACCEPT:
                events += 1
            elif service == BEGIN_RUN:
                runs += 1
            offset += XTC_HEADER_BYTES + extent
    return Xtc2Scan(path, size, None, None, truncated=False)
