"""Interleaved rounds and same-run ratios, for benchmarks that compare against a baseline or a peer.

A shared machine drifts (other work, thermal, page cache), so cases run A B C, A B C, ... and a ratio is the
median over rounds of (A / B within the same round), with its min and max; a ratio names its numerator and
denominator, which are cases of the same invocation, never a figure measured once elsewhere.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from typing import Any


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # not every platform has one
        return []


def interleave(
    cases: dict[str, Callable[[], float | None]], rounds: int, on_error: Callable[[str, Exception], None] | None = None
) -> dict[str, list[float | None]]:
    """Each case once per round, in order, ``rounds`` times: {case: [figure per round]} (None where it failed)."""
    samples: dict[str, list[float | None]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, call in cases.items():
            try:
                samples[name].append(call())
            except Exception as exc:  # one missing peer must not hide the other figures
                if on_error is None:
                    raise
                on_error(name, exc)
                samples[name].append(None)
    return samples


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratio(samples: dict[str, list[float | None]], numerator: str, denominator: str) -> dict[str, Any] | None:
    """The median, min and max over rounds of numerator / denominator within each round; None without a pair."""
    pairs = [
        a / b
        for a, b in zip(samples.get(numerator, []), samples.get(denominator, []), strict=False)
        if a is not None and b
    ]
    if not pairs:
        return None
    return {
        "median": round(statistics.median(pairs), 3),
        "min": round(min(pairs), 3),
        "max": round(max(pairs), 3),
        "rounds": len(pairs),
        "numerator": numerator,
        "denominator": denominator,
    }
