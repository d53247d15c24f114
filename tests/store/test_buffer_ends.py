"""The buffer ends the API owes, on SQLite and PostgreSQL: recorded once, pending until delivered, found again by a
new database object (a restarted API), and listed by age for a restarted buffer."""

from __future__ import annotations

import datetime as dt

from photonstream.store.ends import BufferEndStore
from photonstream.store.models import utcnow
from photonstream.store.streams import StreamStore
from tests.store.databases import DatabaseSpec
from tests.store.test_store import new_stream


def test_ends_stay_pending_until_delivered_across_a_restart(database_spec: DatabaseSpec) -> None:
    db = database_spec.open()
    db.upgrade()
    streams = StreamStore(db)
    first, second = (streams.create(new_stream(), actor="alice") for _ in range(2))
    ends = BufferEndStore(db)
    before = utcnow() - dt.timedelta(seconds=1)
    ends.record(first.id, ["x/1/a"], "failed", "job failed: exit code 3")
    ends.record(second.id, ["x/1/b", "x/2/b"], "cancelled", "cancelled by alice")
    again = ends.record(first.id, ["x/1/a"], "cancelled", "a second end")  # the first end stays
    assert (again.state, again.reason) == ("failed", "job failed: exit code 3")

    restarted = BufferEndStore(database_spec.open())  # a new process on the same database
    assert [(e.stream_id, e.addresses) for e in restarted.pending()] == [
        (first.id, ["x/1/a"]), (second.id, ["x/1/b", "x/2/b"])
    ]  # fmt: skip
    restarted.mark_delivered(first.id)
    delivered_at = ends.get(first.id).delivered_at
    assert delivered_at is not None
    restarted.mark_delivered(first.id)  # twice: the first time stays
    assert ends.get(first.id).delivered_at == delivered_at
    assert [e.stream_id for e in ends.pending()] == [second.id]
    assert [e.stream_id for e in ends.since(before)] == [first.id, second.id]  # delivered or not
    assert ends.since(utcnow()) == []
