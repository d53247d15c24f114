"""Per-stream secrets, job progress reports and consumer results (tables ``stream_secrets``, ``stream_progress``,
``stream_results``).

Report sequence numbers are accepted with a compare-and-set (``UPDATE ... WHERE report_seq < :seq``), so a replayed
or reordered report is refused even with several API processes on one database. Results carry the buffer's
``(instance, id)`` and are stored once, whoever collects them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from photonstream.store.db import Database
from photonstream.store.models import (
    Identity,
    RevokedCredential,
    Stream,
    StreamProgress,
    StreamResult,
    StreamSecret,
    utcnow,
)

Revoked = frozenset[tuple[str, str]]  # (kind, credential id) pairs revoked outside the database (the CA's CRL)


class ReportStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- secrets (a stream's row is written with the stream, by StreamStore.create) ------------------------------
    def set_job_secrets(
        self,
        stream_id: str,
        *,
        producer_public_key: str,
        producer_token_user: str,
        producer_token_hash: str,
        report_secret: str,
    ) -> None:
        with self.db.session() as session:
            session.execute(
                update(StreamSecret)
                .where(StreamSecret.stream_id == stream_id)
                .values(
                    producer_public_key=producer_public_key,
                    producer_token_user=producer_token_user,
                    producer_token_hash=producer_token_hash,
                    report_secret=report_secret,
                )
                .execution_options(synchronize_session=False)
            )

    def set_worker_secrets(
        self, stream_id: str, public_key: str | None, token_user: str | None, token_hash: str | None
    ) -> None:
        """The elastic pools' worker credential of a stream (all None: withdrawn)."""
        with self.db.session() as session:
            session.execute(
                update(StreamSecret)
                .where(StreamSecret.stream_id == stream_id)
                .values(worker_public_key=public_key, worker_token_user=token_user, worker_token_hash=token_hash)
                .execution_options(synchronize_session=False)
            )

    def secrets(self, stream_id: str) -> StreamSecret | None:
        with self.db.session() as session:
            return session.get(StreamSecret, stream_id)

    def accept_seq(self, stream_id: str, seq: int) -> bool:
        """Take ``seq`` as the newest report if it is newer than every accepted one (False: a replay)."""
        with self.db.session() as session:
            result = session.execute(
                update(StreamSecret)
                .where(StreamSecret.stream_id == stream_id, StreamSecret.report_seq < seq)
                .values(report_seq=seq)
                .execution_options(synchronize_session=False)
            )
            return result.rowcount == 1  # type: ignore[attr-defined]

    def access_row(
        self, stream_id: str, revoked_elsewhere: Revoked = frozenset()
    ) -> tuple[Stream, StreamSecret] | None:
        with self.db.session() as session:
            row = session.execute(
                select(Stream, StreamSecret)
                .join(StreamSecret, StreamSecret.stream_id == Stream.id)
                .where(Stream.id == stream_id)
            ).first()
            if row is None or not _owner_holds(session, [row[0]], revoked_elsewhere):
                return None
        return row[0], row[1]

    def access_rows(
        self, finished_after: dt.datetime, revoked_elsewhere: Revoked = frozenset()
    ) -> list[tuple[Stream, StreamSecret]]:
        """Streams whose data the buffer may still hold (active, or finished after ``finished_after``) with their
        secrets: what the buffer's grants are made of."""
        with self.db.session() as session:
            rows = session.execute(
                select(Stream, StreamSecret)
                .join(StreamSecret, StreamSecret.stream_id == Stream.id)
                .where((Stream.finished_at.is_(None)) | (Stream.finished_at > finished_after))
            ).all()
            holding = _owner_holds(session, [stream for stream, _ in rows], revoked_elsewhere)
        return [(stream, secret) for stream, secret in rows if stream.id in holding]

    def owner_gone(self, streams: list[Stream], revoked_elsewhere: Revoked = frozenset()) -> list[Stream]:
        """The streams whose owner no longer holds: disabled, or the credential that created it revoked."""
        with self.db.session() as session:
            holding = _owner_holds(session, streams, revoked_elsewhere)
        return [stream for stream in streams if stream.id not in holding]

    # -- progress ----------------------------------------------------------------------------------------------
    def save_progress(self, stream_id: str, address: str, phase: str, report: dict[str, Any]) -> StreamProgress:
        end = report.get("end") or {}
        now = utcnow()
        with self.db.session() as session:
            row = session.get(StreamProgress, (stream_id, address))
            if row is None:
                row = StreamProgress(stream_id=stream_id, address=address)
                session.add(row)
            row.phase = phase
            row.end_reason = end.get("reason")
            row.report = report
            row.updated_at = now
        return row

    def progress(self, stream_id: str) -> list[StreamProgress]:
        with self.db.session() as session:
            rows = session.scalars(
                select(StreamProgress).where(StreamProgress.stream_id == stream_id).order_by(StreamProgress.address)
            ).all()
        return list(rows)

    # -- results -----------------------------------------------------------------------------------------------
    def add_results(self, stream_of: dict[str, str], instance: str, items: Iterable[dict[str, Any]]) -> int:
        """Store decoded results (``photonstream.client.results.decode_result``) whose address belongs to a known
        stream (``stream_of``: address → stream id); returns how many were new."""
        added = 0
        received = utcnow()
        for item in items:
            stream_id = stream_of.get(item["address"])
            if stream_id is None:
                continue
            row = StreamResult(
                stream_id=stream_id,
                address=item["address"],
                kind=item["kind"],
                group_name=item["group"],
                worker=item["worker"],
                first_frame=item["first_frame"],
                last_frame=item["last_frame"],
                published_at=dt.datetime.fromtimestamp(item["published_at"], dt.UTC),
                received_at=received,
                publisher=item["publisher"][:200],
                data=item["data"],
                buffer_instance=instance,
                buffer_id=item["buffer_id"],
            )
            try:
                with self.db.session() as session:
                    session.add(row)
                added += 1
            except IntegrityError:
                pass  # stored already (another API process, or before a restart)
        return added

    def last_buffer_id(self, instance: str) -> int:
        with self.db.session() as session:
            value = session.scalar(
                select(func.max(StreamResult.buffer_id)).where(StreamResult.buffer_instance == instance)
            )
        return int(value or 0)

    def results(self, stream_id: str, after: int = 0, limit: int = 100, kind: str | None = None) -> list[StreamResult]:
        query = select(StreamResult).where(StreamResult.stream_id == stream_id, StreamResult.id > after)
        if kind is not None:
            query = query.where(StreamResult.kind == kind)
        with self.db.session() as session:
            rows = session.scalars(query.order_by(StreamResult.id).limit(limit)).all()
        return list(rows)

    def newest_result(self, stream_id: str, kind: str) -> StreamResult | None:
        """The stream's most recent result of ``kind`` (the highest id), if any."""
        query = select(StreamResult).where(StreamResult.stream_id == stream_id, StreamResult.kind == kind)
        with self.db.session() as session:
            return session.scalars(query.order_by(StreamResult.id.desc()).limit(1)).first()

    def newest_result_id(self, stream_id: str) -> int:
        with self.db.session() as session:
            value = session.scalar(select(func.max(StreamResult.id)).where(StreamResult.stream_id == stream_id))
        return int(value or 0)


def _owner_holds(session: Any, streams: list[Stream], revoked_elsewhere: Revoked = frozenset()) -> set[str]:
    """Ids of the streams whose owner still holds: not disabled, and the credential that created the stream not
    revoked (in the database, or in ``revoked_elsewhere``: the CA's CRL). A stream of a revoked owner loses its
    buffer grants: its consumers read nothing more."""
    if not streams:
        return set()
    revoked = {(r.kind, r.credential_id) for r in session.scalars(select(RevokedCredential))} | revoked_elsewhere
    disabled = set(session.scalars(select(Identity.name).where(Identity.disabled.is_(True))))
    holding = set()
    for stream in streams:
        used = zip(stream.credential_kind.split("+"), stream.credential_id.split("+"), strict=False)
        if stream.owner not in disabled and not any(pair in revoked for pair in used):
            holding.add(stream.id)
    return holding
