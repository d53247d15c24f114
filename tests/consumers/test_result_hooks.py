"""The analysis consumers publish what they found as typed results: the xtal merger's reports (hit rate, indexing
rate, unit cell) and the TOF consumer's m/q histogram, through a real buffer (its results store)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.client import ResultPublisher
from photonstream.client.results import check_result
from photonstream.consumers.tof import TofOptions, run_tof_consumer
from photonstream.consumers.xtal.merge import run_merger
from photonstream.frames import EndMessage, StartMessage
from photonstream.sources.synthetic_tof import DEFAULT_SPECIES, SyntheticTof, SyntheticTofOptions
from tests.buffer.support import start_service

STREAM = "exp/3/results"


@pytest.fixture
def buffer() -> Iterator[BufferService]:
    service = start_service()
    yield service
    service.stop()


def published(service: BufferService) -> list[tuple[str, dict[str, Any], list[int] | None]]:
    items = service.results_after(0)
    for item in items:
        check_result(item["t"], msgpack.unpackb(item["d"]))  # what the API will accept
    return [(item["t"], msgpack.unpackb(item["d"]), item["f"]) for item in items]


def test_the_tof_consumer_publishes_its_mq_histogram(buffer: BufferService) -> None:
    source = SyntheticTof(SyntheticTofOptions(events=60, seed=4))
    info = source.open()
    messages = [StartMessage(stream_id="results", source=info.details), *source.events()]
    messages.append(EndMessage("results", events_sent=60, counts={"read": 60}))
    with ResultPublisher(buffer.endpoint, STREAM, group="tof", worker="t0") as results:
        summary = run_tof_consumer(iter(messages), TofOptions(mq_bins=(0.0, 50.0, 5000)), results=results)
    ((kind, data, frames),) = published(buffer)
    assert (kind, frames) == ("tof_histogram", [0, 59])
    assert len(data["edges"]) == len(data["counts"]) + 1 <= 2001 and sum(data["counts"]) > 0
    assert sum(data["counts"]) <= summary.histograms["mq"].total.sum()  # merged bins, nothing invented
    for species in DEFAULT_SPECIES:  # the published peaks are the species
        assert min(abs(p - species.mq) for p in data["peaks"]) < 0.02 * species.mq


def test_the_xtal_merger_publishes_rates_and_the_cell(buffer: BufferService) -> None:
    cell = (79.1, 79.1, 37.9, 90.0, 90.0, 90.0)
    records: list[dict[str, Any]] = []
    for event in range(20):
        hit = event % 2 == 0
        indexed = hit and event % 4 == 0
        record = {"type": "result", "worker": "w", "event": event, "hit": hit, "indexed": indexed}
        if indexed:
            record |= {"cell": cell, "reflections": {"hkl": np.zeros((0, 3), np.int32), "I": [], "sigma": []}}
        records.append(record)
    records.append({"type": "end", "worker": "w", "events_sent": 20})
    with ResultPublisher(buffer.endpoint, STREAM, group="xtal-merger", worker="merger") as results:
        outcome = run_merger(records, workers=1, report_every=10, publisher=results)
    kinds = [kind for kind, _, _ in published(buffer)]
    assert kinds.count("hit_rate") == kinds.count("indexing_rate") == kinds.count("unit_cell") >= 2
    last = {kind: data for kind, data, _ in published(buffer)}
    assert last["hit_rate"] == {"frames": 20, "hits": 10, "rate": 0.5}
    assert last["indexing_rate"]["indexed"] == outcome.report["indexed"] == 5
    assert [last["unit_cell"][k] for k in ("a", "b", "c")] == pytest.approx(cell[:3])
