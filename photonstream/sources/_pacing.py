"""Event indices a synthetic source owns, optionally paced to a repetition rate."""

from __future__ import annotations

import time
from collections.abc import Iterator

from photonstream.sources.base import Shard


def paced_indices(events: int, shard: Shard, rate_hz: float) -> Iterator[int]:
    """Yield the indices in ``range(events)`` this shard owns, no faster than ``rate_hz`` (0: as fast as asked).

    Pacing is against the start time, not the previous event, so a slow consumer does not lower the mean rate.
    """
    started = time.perf_counter()
    emitted = 0
    for index in range(events):
        if not shard.owns(index):
            continue
        if rate_hz > 0:
            delay = started + emitted / rate_hz - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        emitted += 1
        yield index
