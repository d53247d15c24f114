"""The tables: streams and their transitions, the policy (identities, groups, grants, roles), revocations, datasets,
and the audit log; per stream its secrets, progress reports and results. Change a table here and add an alembic
revision in ``migrations/versions`` (a test compares them).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC in Python, naive UTC in the database (SQLite keeps no zone; PostgreSQL gets the same)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UTCDateTime needs a timezone-aware datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Stream(Base):
    """One stream request and where it stands."""

    __tablename__ = "streams"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    experiment: Mapped[str] = mapped_column(String(64), index=True)
    runs: Mapped[list[int]] = mapped_column(JSON)
    detectors: Mapped[list[str]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    starting_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    streaming_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    data_endpoint: Mapped[dict[str, Any]] = mapped_column(JSON)
    consumer_public_key: Mapped[str] = mapped_column(String(40))
    job_backend: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    workdir: Mapped[str | None] = mapped_column(Text, nullable=True)
    credential_kind: Mapped[str] = mapped_column(String(16))
    credential_id: Mapped[str] = mapped_column(String(128), default="")
    credential_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    estimated_end_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class StreamTransition(Base):
    """Every state a stream entered, in order (the SSE feed and the history)."""

    __tablename__ = "stream_transitions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")


class Identity(Base):
    """An identity the service has seen or an admin named; ``disabled`` refuses it whatever it presents."""

    __tablename__ = "identities"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class GroupMember(Base):
    __tablename__ = "group_members"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    identity: Mapped[str] = mapped_column(String(128), primary_key=True)


class ExperimentGrant(Base):
    """``subject`` (an identity or a group) may read ``experiment`` ('*': every experiment)."""

    __tablename__ = "experiment_grants"
    __table_args__ = (UniqueConstraint("subject_kind", "subject", "experiment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_kind: Mapped[str] = mapped_column(String(16))  # identity | group
    subject: Mapped[str] = mapped_column(String(128), index=True)
    experiment: Mapped[str] = mapped_column(String(64))


class RoleBinding(Base):
    """``subject`` (an identity or a group) holds ``role`` (user, operator, admin)."""

    __tablename__ = "role_bindings"
    __table_args__ = (UniqueConstraint("subject_kind", "subject", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_kind: Mapped[str] = mapped_column(String(16))
    subject: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))


class RevokedCredential(Base):
    """A certificate serial (hex) or token id refused from the next request on."""

    __tablename__ = "revoked_credentials"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # certificate | token
    credential_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    revoked_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")


class Dataset(Base):
    """A run of an experiment that can be streamed: its detectors and size (the catalogue behind /v1/datasets)."""

    __tablename__ = "datasets"

    experiment: Mapped[str] = mapped_column(String(64), primary_key=True)
    run: Mapped[int] = mapped_column(Integer, primary_key=True)
    detectors: Mapped[list[str]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    events: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One authorization decision: who, did what, to which object, and the outcome."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    request_id: Mapped[str] = mapped_column(String(64), default="")
    identity: Mapped[str] = mapped_column(String(128), index=True)
    action: Mapped[str] = mapped_column(String(64))
    object: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(16))  # allow | deny | error
    detail: Mapped[str] = mapped_column(Text, default="")


class StreamSecret(Base):
    """What the service keeps of a stream's data-plane and callback credentials: public keys, token hashes, and
    the callback secret (HMAC needs it); the consumer's and the job's secrets leave the service once."""

    __tablename__ = "stream_secrets"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    consumer_token_user: Mapped[str] = mapped_column(String(64))
    consumer_token_hash: Mapped[str] = mapped_column(String(64))
    producer_public_key: Mapped[str | None] = mapped_column(String(40), nullable=True)
    producer_token_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    producer_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report_secret: Mapped[str | None] = mapped_column(String(64), nullable=True)
    report_seq: Mapped[int] = mapped_column(BigInteger, default=0)  # newest report accepted (replays are older)
    # the elastic pools' workers read with a credential of their own, made when the pools start, dropped after
    worker_public_key: Mapped[str | None] = mapped_column(String(40), nullable=True)
    worker_token_user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    worker_token_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class StreamProgress(Base):
    """The newest progress report of one run (buffer address) of a stream, from its job."""

    __tablename__ = "stream_progress"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    address: Mapped[str] = mapped_column(String(200), primary_key=True)
    phase: Mapped[str] = mapped_column(String(16))  # starting | streaming | ended
    end_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)


class StreamResult(Base):
    """A typed result a consumer published for a stream (hit rate, unit cell, TOF histogram, ...)."""

    __tablename__ = "stream_results"
    __table_args__ = (UniqueConstraint("buffer_instance", "buffer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(64))
    group_name: Mapped[str] = mapped_column(String(128), default="")
    worker: Mapped[str] = mapped_column(String(128), default="")
    first_frame: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    last_frame: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    published_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    publisher: Mapped[str] = mapped_column(String(200), default="")  # the buffer principal (curve:KEY, token:USER)
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    buffer_instance: Mapped[str] = mapped_column(String(32))  # with buffer_id: each buffer result stored once
    buffer_id: Mapped[int] = mapped_column(BigInteger)


class StreamPoolEvent(Base):
    """One decision of a stream's elastic worker pool (start-worker, scale-up, scale-down, replace, stopped, ...)."""

    __tablename__ = "stream_pool_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), index=True)
    pool: Mapped[str] = mapped_column(String(64))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(String(32))
    workers: Mapped[int] = mapped_column(Integer)
    lag: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    members: Mapped[int | None] = mapped_column(Integer, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    jobs: Mapped[list[str]] = mapped_column(JSON)  # backend job ids started or cancelled by this decision


class StreamBufferEnd(Base):
    """The end the API owes a failed or cancelled stream in the buffer (its job sends none): kept until delivered,
    so an API restart retries it, and kept after, so a restarted buffer is told again (``BufferLink.sync``)."""

    __tablename__ = "stream_buffer_ends"

    stream_id: Mapped[str] = mapped_column(ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # failed | cancelled: the END's reason
    reason: Mapped[str] = mapped_column(Text, default="")  # the END's one-line message
    addresses: Mapped[list[str]] = mapped_column(JSON)
    recorded_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, index=True)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, nullable=True, index=True)


class PoolLease(Base):
    """Which API process runs the elastic worker pools of every stream on this database, until when: renewed by its
    launcher's passes, taken over by another once it expired (``photonstream.store.leases``)."""

    __tablename__ = "pool_leases"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)  # "pools": one lease for all of them
    owner: Mapped[str] = mapped_column(String(128))  # host:pid:random of the API process holding it
    acquired_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)  # when this owner took it
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
