"""The ends the API owes failed and cancelled streams in the buffer (table ``stream_buffer_ends``).

A stream whose job died or was cancelled sends no end message, so the API ends it in the buffer (``FIN``). That
end is recorded here first, pending, and marked delivered once the buffer took it: a launcher started after a
restart finds the pending ones and delivers them, and ``BufferLink.sync`` tells a restarted buffer every end of
the last ``buffer_grant_keep_s`` again, so that a consumer subscribing there still gets it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from photonstream.store.db import Database
from photonstream.store.models import StreamBufferEnd, utcnow


class BufferEndStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, stream_id: str, addresses: list[str], state: str, reason: str) -> StreamBufferEnd:
        """The stream's end, pending; a stream has one end (a second record keeps the first)."""
        row = StreamBufferEnd(
            stream_id=stream_id, state=state, reason=reason, addresses=list(addresses), recorded_at=utcnow()
        )
        try:
            with self.db.session() as session:
                existing = session.get(StreamBufferEnd, stream_id)
                if existing is not None:
                    return existing
                session.add(row)
        except IntegrityError:  # another API process recorded it at the same moment
            existing = self.get(stream_id)
            assert existing is not None
            return existing
        return row

    def get(self, stream_id: str) -> StreamBufferEnd | None:
        with self.db.session() as session:
            return session.get(StreamBufferEnd, stream_id)

    def pending(self) -> list[StreamBufferEnd]:
        """Ends not delivered yet, oldest first."""
        with self.db.session() as session:
            query = select(StreamBufferEnd).where(StreamBufferEnd.delivered_at.is_(None))
            return list(session.scalars(query.order_by(StreamBufferEnd.recorded_at)))

    def since(self, after: dt.datetime) -> list[StreamBufferEnd]:
        """Ends recorded after ``after`` (delivered or not), oldest first: what a restarted buffer is told again."""
        with self.db.session() as session:
            query = select(StreamBufferEnd).where(StreamBufferEnd.recorded_at > after)
            return list(session.scalars(query.order_by(StreamBufferEnd.recorded_at)))

    def mark_delivered(self, stream_id: str) -> None:
        with self.db.session() as session:
            session.execute(
                update(StreamBufferEnd)
                .where(StreamBufferEnd.stream_id == stream_id, StreamBufferEnd.delivered_at.is_(None))
                .values(delivered_at=utcnow())
            )
