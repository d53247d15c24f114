"""The elastic pools' events on SQLite and PostgreSQL: kept in order per stream, and a pool whose newest event is
not ``stopped`` is found (with every job it started) as one an earlier API process left running."""

from __future__ import annotations

from photonstream.store.db import Database
from photonstream.store.models import utcnow
from photonstream.store.pools import PoolEventStore
from photonstream.store.streams import StreamStore
from tests.store.test_store import new_stream


def test_pool_events_are_kept_in_order_and_unfinished_pools_are_found(database: Database) -> None:
    streams = StreamStore(database)
    first, second = (streams.create(new_stream(), actor="alice") for _ in range(2))
    events = PoolEventStore(database)
    now = utcnow()
    events.add(first.id, "indexers", "start-worker", at=now, workers=1, lag=None, jobs=["j1"])
    events.add(first.id, "indexers", "scale-up", at=now, workers=3, lag=250, members=1, jobs=["j2", "j3"])
    events.add(first.id, "indexers", "scale-down", at=now, workers=2, lag=1, members=3, jobs=["j3"])
    events.add(first.id, "monitor", "start-worker", at=now, workers=1, jobs=["m1"])
    events.add(first.id, "monitor", "stopped", at=now, workers=0, detail="every worker ended")
    events.add(second.id, "indexers", "start-worker", at=now, workers=1, jobs=["k1"])
    events.add(second.id, "indexers", "stopped", at=now, workers=0)

    rows = events.events(first.id)
    assert [(r.pool, r.action) for r in rows] == [
        ("indexers", "start-worker"), ("indexers", "scale-up"), ("indexers", "scale-down"),
        ("monitor", "start-worker"), ("monitor", "stopped"),
    ]  # fmt: skip
    assert rows[1].lag == 250 and rows[1].members == 1 and rows[1].jobs == ["j2", "j3"]
    assert rows[0].lag is None and rows[0].at == now
    assert [r.action for r in events.events(first.id, after=rows[2].id, limit=1)] == ["start-worker"]
    newest = events.newest(first.id)  # per pool, its newest event (the other stream's not among them)
    assert {pool: (row.action, row.workers) for pool, row in newest.items()} == {
        "indexers": ("scale-down", 2), "monitor": ("stopped", 0),
    }  # fmt: skip

    (unfinished,) = events.unfinished()  # the monitor pool and the second stream's pool stopped
    assert (unfinished.stream_id, unfinished.pool, unfinished.jobs) == (first.id, "indexers", ["j1", "j2", "j3"])
    events.add(first.id, "indexers", "stopped", at=now, workers=0, jobs=["j1", "j2"])
    assert events.unfinished() == []
