"""A consumer group's loss policy (lossless, latest, decimate:N, sample:RATE) and where a new group starts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from photonstream.buffer.log import StreamLog
from photonstream.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Policy:
    kind: str  # lossless | latest | decimate | sample
    every: int = 1  # decimate:N
    rate: float = 0.0  # sample:RATE (messages per second)

    @classmethod
    def parse(cls, text: str) -> Policy:
        name, _, arg = str(text).strip().partition(":")
        if name in ("lossless", "latest") and not arg:
            return cls(name)
        try:
            if name == "decimate":
                every = int(arg)
                if every >= 1:
                    return cls("decimate", every=every)
            elif name == "sample":
                rate = float(arg)
                if rate > 0:
                    return cls("sample", rate=rate)
        except ValueError:
            pass
        raise ConfigError(
            f"policy: {text!r} is not one of lossless, latest, decimate:N (N >= 1), sample:RATE (RATE > 0)"
        )

    def __str__(self) -> str:
        if self.kind == "decimate":
            return f"decimate:{self.every}"
        if self.kind == "sample":
            return f"sample:{self.rate:g}"
        return self.kind

    @property
    def lossless(self) -> bool:
        return self.kind == "lossless"


def parse_start(spec: Any) -> tuple[str, float]:
    """Where a new group starts: ``beginning``, ``newest``, an offset (``42`` or ``offset:42``) or a time
    (``time:1700000000.5`` seconds since the epoch, or ``time:2026-11-25T12:00:00+00:00``)."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = f"offset:{spec}"
    text = str(spec).strip()
    if text in ("beginning", "newest"):
        return text, 0.0
    name, _, arg = text.partition(":")
    try:
        if name == "offset" and int(arg) >= 0:
            return "offset", float(int(arg))
        if name == "time":
            try:
                return "time", float(arg)
            except ValueError:
                return "time", datetime.fromisoformat(arg).timestamp()
        if text.isdigit():
            return "offset", float(int(text))
    except ValueError:
        pass
    raise ConfigError(f"start: {spec!r} is not one of beginning, newest, offset:N, time:EPOCH_SECONDS or time:ISO-8601")


def start_offset(log: StreamLog, spec: tuple[str, float]) -> int:
    kind, value = spec
    if kind == "beginning":
        return log.first
    if kind == "newest":
        return max(log.first, log.head - 1)
    if kind == "offset":
        return max(int(value), 0)
    return log.offset_at_time(int(value * 1e9))
