"""Streams and their state machine.

    queued ──► starting ──► streaming ──► completed
      │            │            │
      └────────────┴────────────┴──────► failed | cancelled

Each change is a compare-and-set on the current state (``UPDATE ... WHERE state = :seen``), so two API processes on
one database never both move a stream: the second sees the new state and is refused like any illegal transition.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, select, update

from photonstream.errors import PhotonstreamError
from photonstream.store.db import Database
from photonstream.store.models import Stream, StreamSecret, StreamTransition, utcnow


class StreamState(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    STREAMING = "streaming"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({StreamState.COMPLETED, StreamState.FAILED, StreamState.CANCELLED})
ACTIVE = (StreamState.QUEUED, StreamState.STARTING, StreamState.STREAMING)

ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    StreamState.QUEUED: frozenset({StreamState.STARTING, StreamState.FAILED, StreamState.CANCELLED}),
    StreamState.STARTING: frozenset({StreamState.STREAMING, StreamState.FAILED, StreamState.CANCELLED}),
    StreamState.STREAMING: frozenset({StreamState.COMPLETED, StreamState.FAILED, StreamState.CANCELLED}),
    StreamState.COMPLETED: frozenset(),
    StreamState.FAILED: frozenset(),
    StreamState.CANCELLED: frozenset(),
}

TIMESTAMP_OF = {
    StreamState.STARTING: "starting_at",
    StreamState.STREAMING: "streaming_at",
    StreamState.COMPLETED: "finished_at",
    StreamState.FAILED: "finished_at",
    StreamState.CANCELLED: "finished_at",
}


class IllegalTransitionError(PhotonstreamError):
    """A state change the machine does not allow (or that another process made first). (409)"""

    http_status = 409


class StreamNotFoundError(PhotonstreamError, LookupError):
    """No stream with this id. (404)"""

    http_status = 404


@dataclass(frozen=True)
class StreamPage:
    items: list[Stream]
    total: int
    offset: int
    limit: int


class StreamStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, stream: Stream, actor: str, secret: StreamSecret | None = None) -> Stream:
        """Insert a new stream in state queued, with its first transition and its ``secret``: one transaction, so
        the launcher never sees a queued stream without its secrets (it would make its own, and the request's
        insert would then fail)."""
        now = utcnow()
        stream.state = StreamState.QUEUED
        stream.created_at = stream.updated_at = now
        with self.db.session() as session:
            session.add(stream)
            session.flush()
            if secret is not None:
                secret.stream_id = stream.id
                session.add(secret)
            session.add(
                StreamTransition(
                    stream_id=stream.id, at=now, from_state=None, to_state=StreamState.QUEUED, reason="", actor=actor
                )
            )
        return stream

    def get(self, stream_id: str) -> Stream:
        with self.db.session() as session:
            stream = session.get(Stream, stream_id)
            if stream is None:
                raise StreamNotFoundError(f"stream {stream_id} not found")
            return stream

    def find(
        self,
        *,
        states: Sequence[str] = (),
        experiment: str | None = None,
        owner: str | None = None,
        experiments_in: Sequence[str] | None = None,
        offset: int = 0,
        limit: int = 50,
    ) -> StreamPage:
        """Streams, newest first, filtered; ``experiments_in`` limits them to a set of experiments."""
        query = select(Stream)
        if states:
            query = query.where(Stream.state.in_(list(states)))
        if experiment is not None:
            query = query.where(Stream.experiment == experiment)
        if owner is not None:
            query = query.where(Stream.owner == owner)
        if experiments_in is not None:
            query = query.where(Stream.experiment.in_(list(experiments_in)))
        with self.db.session() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = session.scalars(
                query.order_by(Stream.created_at.desc(), Stream.id).offset(offset).limit(limit)
            ).all()
        return StreamPage(list(rows), total, offset, limit)

    def finished_since(self, after: dt.datetime, states: Sequence[str]) -> list[Stream]:
        """Streams that ended in one of ``states`` after ``after``, oldest first."""
        query = select(Stream).where(Stream.state.in_(list(states)), Stream.finished_at > after)
        with self.db.session() as session:
            return list(session.scalars(query.order_by(Stream.finished_at)).all())

    def active(self) -> list[Stream]:
        with self.db.session() as session:
            rows = session.scalars(select(Stream).where(Stream.state.in_(ACTIVE)).order_by(Stream.created_at)).all()
        return list(rows)

    def transition(
        self,
        stream_id: str,
        to: StreamState,
        reason: str = "",
        actor: str = "",
        expect: StreamState | None = None,
        at: dt.datetime | None = None,
    ) -> Stream:
        """Move a stream to ``to``; refuse transitions the machine does not allow (or a lost race)."""
        when = at or utcnow()
        with self.db.session() as session:
            stream = session.get(Stream, stream_id)
            if stream is None:
                raise StreamNotFoundError(f"stream {stream_id} not found")
            current = StreamState(stream.state)
            if expect is not None and current != expect:
                raise IllegalTransitionError(f"stream {stream_id} is {current}, not {expect}")
            if to not in ALLOWED[current]:
                raise IllegalTransitionError(f"stream {stream_id} cannot go from {current} to {to}")
            values: dict[str, object] = {"state": to.value, "updated_at": when, TIMESTAMP_OF[to]: when}
            if reason or to.finished:
                values["reason"] = reason
            result = session.execute(
                update(Stream)
                .where(Stream.id == stream_id, Stream.state == current.value)
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise IllegalTransitionError(f"stream {stream_id} changed state meanwhile; {to} refused")
            session.add(
                StreamTransition(
                    stream_id=stream_id,
                    at=when,
                    from_state=current.value,
                    to_state=to.value,
                    reason=reason,
                    actor=actor,
                )
            )
        return self.get(stream_id)

    def set_job(self, stream_id: str, backend: str, job_id: str, workdir: str) -> None:
        with self.db.session() as session:
            session.execute(
                update(Stream)
                .where(Stream.id == stream_id)
                .values(job_backend=backend, job_id=job_id, workdir=workdir, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    def transitions(self, stream_id: str, after_id: int = 0) -> list[StreamTransition]:
        with self.db.session() as session:
            rows = session.scalars(
                select(StreamTransition)
                .where(StreamTransition.stream_id == stream_id, StreamTransition.id > after_id)
                .order_by(StreamTransition.id)
            ).all()
        return list(rows)

    def count_by_state(self) -> dict[str, int]:
        with self.db.session() as session:
            rows = session.execute(select(Stream.state, func.count()).group_by(Stream.state)).all()
        return {state: count for state, count in rows}
