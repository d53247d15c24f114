"""The structure stage as a process: bind, take the merger's newest snapshot, update, publish, until the final one.

    run_structure_stage("tcp://*:5710", "1aki", Path("out"), publisher=results)   # merger: --structure tcp://...

Each update works on the newest snapshot: the stage reads every one that waits and keeps the last. Each snapshot
is checked before use (a message that is not a snapshot, too large, or with inconsistent arrays is logged and
dropped; the stage goes on). Each update's summary is published as a ``structure`` result (``ResultSink``) for
the API and written to ``out/structure.json``; the files next to it are what ``/v1/streams/{id}/structure/files``
serves where the stage writes into the service's artifacts folder.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from photonstream.consumers.pull import StreamTimeout
from photonstream.consumers.structure.stage import StructureStage
from photonstream.consumers.xtal._wire import unpack
from photonstream.consumers.xtal.published import ResultSink
from photonstream.errors import PhotonstreamError

log = logging.getLogger(__name__)

MAX_SNAPSHOT_BYTES = 512 << 20  # ~10 million reflections per group; anything larger is not a merger's
MAX_GROUPS = 4
PUBLISHED_KEYS = ("update", "at_s", "frames", "indexed", "r_work", "r_free", "r_work_start", "r_free_start",
                  "reflections", "free_reflections", "d_min", "seconds", "final", "model", "pump_probe", "peak_map",
                  "peaks", "section", "files", "history", "steps", "k_sol", "b_sol", "light_dark_scale")  # fmt: skip


def check_snapshot(record: Any) -> dict[str, Any]:
    """``record`` if it is a merger snapshot; PhotonstreamError saying what is wrong otherwise."""
    if not isinstance(record, dict) or record.get("type") != "merged":
        raise PhotonstreamError("not a merged-data snapshot")
    groups = record.get("groups")
    if not isinstance(groups, dict) or not groups or len(groups) > MAX_GROUPS:
        raise PhotonstreamError(f"a snapshot needs 1 to {MAX_GROUPS} groups of merged data")
    for label, group in groups.items():
        if not isinstance(group, dict) or not {"hkl", "I", "sigma"} <= set(group):
            raise PhotonstreamError(f"group {label!r}: needs hkl, I and sigma")
    cell = record.get("unit_cell")
    if not isinstance(cell, list) or len(cell) != 6 or not isinstance(record.get("space_group"), str):
        raise PhotonstreamError("a snapshot needs unit_cell (6 numbers) and space_group")
    return record


def run_structure_stage(
    endpoint: str,
    model: str,
    out_dir: Path,
    *,
    bind: bool = True,
    publisher: ResultSink | None = None,
    idle_timeout_s: float = 300.0,
    budget_s: float = 20.0,
    on_update: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Update on each newest snapshot until the final one has been done; the summaries, in order."""
    stage = StructureStage(model, out_dir, budget_s=budget_s)
    socket = zmq.Context.instance().socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, 2)
    socket.setsockopt(zmq.MAXMSGSIZE, MAX_SNAPSHOT_BYTES)
    socket.setsockopt(zmq.LINGER, 0)
    (socket.bind if bind else socket.connect)(endpoint)
    summaries: list[dict[str, Any]] = []
    heard = time.monotonic()
    try:
        while True:
            if not socket.poll(250):
                if time.monotonic() - heard > idle_timeout_s:
                    raise StreamTimeout(f"structure stage: no snapshot on {endpoint} within {idle_timeout_s:g} s")
                continue
            heard = time.monotonic()
            payload = socket.recv()
            while socket.poll(0):  # newer ones supersede it
                payload = socket.recv()
            try:
                snapshot = check_snapshot(unpack(payload))
                summary = stage.update(snapshot)
            except (PhotonstreamError, ValueError, TypeError, KeyError) as exc:
                log.warning("structure stage: snapshot dropped: %s", exc)
                continue
            summaries.append(summary)
            if on_update is not None:
                on_update(summary)
            if publisher is not None:
                _publish(publisher, summary)
            if snapshot.get("final"):
                return summaries
    finally:
        socket.close()


def _publish(publisher: ResultSink, summary: dict[str, Any]) -> None:
    try:
        publisher.publish("structure", {key: summary[key] for key in PUBLISHED_KEYS if key in summary})
    except PhotonstreamError as exc:
        log.warning("structure stage: result not published: %s", exc)
