"""The merger's feed to the structure stage: merged intensities per group, every few seconds and once at the end.

The feed PUSHes over a ZeroMQ socket with a send queue of two and drops a snapshot that does not fit (the next one
supersedes it; the final one waits for room), and the stage reads every waiting snapshot and keeps the newest, so a
stage slower than the feed refines the newest data, never a backlog. (ZeroMQ's own ``CONFLATE`` loses every
message after the first that arrives while the reader is busy, over TCP, so it is not used.) A
snapshot record (``snapshot_record``) carries, per group label (``all``; ``on`` and ``off`` for pump-probe runs),
the merged Miller indices, intensities and σ, with the cell, space group, wavelength, frame counts and ``final``.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import zmq

from photonstream.consumers.xtal._wire import pack

log = logging.getLogger(__name__)

DEFAULT_EVERY_S = 10.0
QUEUE = 2
FINAL_SEND_TIMEOUT_S = 60.0


def snapshot_record(groups: dict[str, Any], symmetry: dict[str, Any], *, frames: int, indexed: int,
                    final: bool) -> dict[str, Any]:  # fmt: skip
    """``groups`` maps a label to merged intensities (objects with hkl, intensity, sigma); ``symmetry`` has
    unit_cell, space_group and wavelength_a (the merger's start-record fields)."""
    return {
        "type": "merged",
        "final": final,
        "frames": frames,
        "indexed": indexed,
        "unit_cell": [float(v) for v in symmetry["unit_cell"]],
        "space_group": str(symmetry["space_group"]),
        "wavelength_a": float(symmetry.get("wavelength_a", 1.0)),
        "groups": {
            label: {
                "hkl": np.asarray(m.hkl, np.int32),
                "I": np.asarray(m.intensity, np.float64),
                "sigma": np.asarray(m.sigma, np.float64),
            }
            for label, m in groups.items()
            if len(m.hkl)
        },
    }


class StructureFeed:
    """Sends the merger's snapshots to a structure stage at ``endpoint`` (connects; the stage binds), or, with
    ``bind``, offers them at ``endpoint`` for a stage that connects (the service's, wherever its job runs)."""

    def __init__(self, endpoint: str, every_s: float = DEFAULT_EVERY_S, *, bind: bool = False) -> None:
        self.endpoint = endpoint
        self.every_s = every_s
        self.sent = 0
        self.dropped = 0
        self._last_sent: float | None = None
        self._indexed_sent = -1
        # A context of its own: closing it waits (up to LINGER) until the final snapshot has left the process
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, QUEUE)
        self._socket.setsockopt(zmq.LINGER, 30_000)
        (self._socket.bind if bind else self._socket.connect)(endpoint)

    def due(self, indexed: int) -> bool:
        if indexed == self._indexed_sent:
            return False
        return self._last_sent is None or time.monotonic() - self._last_sent >= self.every_s

    def send(self, merger: Any, symmetry: dict[str, Any], *, final: bool = False) -> None:
        """A snapshot of ``merger`` (a ``merge.Merger``): each group, and the whole run as ``all`` when the run
        has no groups of its own."""
        labels = [label for label in merger.sums.groups if label != "all"]
        groups = {label: merger.merged(label) for label in labels} if {"on", "off"} <= set(labels) else {}
        groups = groups or {"all": merger.merged()}
        record = snapshot_record(groups, symmetry, frames=merger.frames, indexed=merger.indexed, final=final)
        if not record["groups"]:
            return  # nothing merged yet (a final one too: a stage has nothing to refine against)
        payload = pack(record)
        try:
            if final:
                self._socket.setsockopt(zmq.SNDTIMEO, int(FINAL_SEND_TIMEOUT_S * 1000))
                self._socket.send(payload, copy=False)
            else:
                self._socket.send(payload, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            if final:
                log.warning("structure feed: the final snapshot found no room at %s within %g s",
                            self.endpoint, FINAL_SEND_TIMEOUT_S)  # fmt: skip
            return
        self._last_sent, self._indexed_sent = time.monotonic(), merger.indexed
        self.sent += 1

    def close(self) -> None:
        self._socket.close()
        self._context.term()
