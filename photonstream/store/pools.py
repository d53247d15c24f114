"""The decisions of the streams' elastic worker pools (table ``stream_pool_events``).

A pool's events end with ``stopped`` once it finished (its workers ended or were cancelled). A pool whose last
event is something else was still running when its API process went away: ``unfinished`` finds those, with every
worker job they started, so that a restarted API can cancel what is left (``photonstream.api.pools``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from sqlalchemy import func, select

from photonstream.store.db import Database
from photonstream.store.models import StreamPoolEvent


@dataclass
class UnfinishedPool:
    stream_id: str
    pool: str
    jobs: list[str] = field(default_factory=list)  # every job it started, oldest first


class PoolEventStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        stream_id: str,
        pool: str,
        action: str,
        *,
        at: dt.datetime,
        workers: int,
        lag: int | None = None,
        members: int | None = None,
        detail: str = "",
        jobs: list[str] | tuple[str, ...] = (),
    ) -> int:
        row = StreamPoolEvent(
            stream_id=stream_id,
            pool=pool,
            at=at,
            action=action,
            workers=workers,
            lag=lag,
            members=members,
            detail=detail,
            jobs=list(jobs),
        )
        with self.db.session() as session:
            session.add(row)
            session.flush()
            return int(row.id)

    def events(self, stream_id: str, after: int = 0, limit: int = 1000) -> list[StreamPoolEvent]:
        query = (
            select(StreamPoolEvent)
            .where(StreamPoolEvent.stream_id == stream_id, StreamPoolEvent.id > after)
            .order_by(StreamPoolEvent.id)
            .limit(limit)
        )
        with self.db.session() as session:
            return list(session.scalars(query).all())

    def newest(self, stream_id: str) -> dict[str, StreamPoolEvent]:
        """Pool name → its newest event, for the pools of ``stream_id`` that recorded any."""
        newest = (
            select(func.max(StreamPoolEvent.id).label("id"))
            .where(StreamPoolEvent.stream_id == stream_id)
            .group_by(StreamPoolEvent.pool)
            .subquery()
        )
        with self.db.session() as session:
            rows = session.scalars(select(StreamPoolEvent).join(newest, StreamPoolEvent.id == newest.c.id)).all()
        return {row.pool: row for row in rows}

    def unfinished(self) -> list[UnfinishedPool]:
        """Pools of any stream whose newest event is not ``stopped``, with the jobs they started."""
        newest = (
            select(StreamPoolEvent.stream_id, StreamPoolEvent.pool, func.max(StreamPoolEvent.id).label("id"))
            .group_by(StreamPoolEvent.stream_id, StreamPoolEvent.pool)
            .subquery()
        )
        with self.db.session() as session:
            open_pools = session.execute(
                select(StreamPoolEvent.stream_id, StreamPoolEvent.pool)
                .join(newest, StreamPoolEvent.id == newest.c.id)
                .where(StreamPoolEvent.action != "stopped")
            ).all()
            found = []
            for stream_id, pool in open_pools:
                jobs: list[str] = []
                for row_jobs in session.scalars(
                    select(StreamPoolEvent.jobs)
                    .where(StreamPoolEvent.stream_id == stream_id, StreamPoolEvent.pool == pool)
                    .order_by(StreamPoolEvent.id)
                ):
                    jobs.extend(job for job in row_jobs or [] if job not in jobs)
                found.append(UnfinishedPool(stream_id, pool, jobs))
        return found
