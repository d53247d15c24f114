"""Initial schema: streams, transitions, policy, revocations, datasets, audit log.

Revision ID: 0001
Revises: (none)
Created: 2026-11-25 12:04:38.608682
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("object", sa.String(length=256), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_at"), ["at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_identity"), ["identity"], unique=False)

    op.create_table(
        "datasets",
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.Column("run", sa.Integer(), nullable=False),
        sa.Column("detectors", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("experiment", "run", name=op.f("pk_datasets")),
    )
    op.create_table(
        "experiment_grants",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_grants")),
        sa.UniqueConstraint("subject_kind", "subject", "experiment", name=op.f("uq_experiment_grants_subject_kind")),
    )
    with op.batch_alter_table("experiment_grants", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experiment_grants_subject"), ["subject"], unique=False)

    op.create_table(
        "group_members",
        sa.Column("group_name", sa.String(length=64), nullable=False),
        sa.Column("identity", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("group_name", "identity", name=op.f("pk_group_members")),
    )
    op.create_table(
        "identities",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_identities")),
    )
    op.create_table(
        "revoked_credentials",
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "credential_id", name=op.f("pk_revoked_credentials")),
    )
    op.create_table(
        "role_bindings",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("subject_kind", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_role_bindings")),
        sa.UniqueConstraint("subject_kind", "subject", "role", name=op.f("uq_role_bindings_subject_kind")),
    )
    with op.batch_alter_table("role_bindings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_role_bindings_subject"), ["subject"], unique=False)

    op.create_table(
        "streams",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("owner", sa.String(length=128), nullable=False),
        sa.Column("experiment", sa.String(length=64), nullable=False),
        sa.Column("runs", sa.JSON(), nullable=False),
        sa.Column("detectors", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("starting_at", sa.DateTime(), nullable=True),
        sa.Column("streaming_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("data_endpoint", sa.JSON(), nullable=False),
        sa.Column("consumer_public_key", sa.String(length=40), nullable=False),
        sa.Column("job_backend", sa.String(length=32), nullable=False),
        sa.Column("job_id", sa.String(length=256), nullable=True),
        sa.Column("workdir", sa.Text(), nullable=True),
        sa.Column("credential_kind", sa.String(length=16), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("credential_expires_at", sa.DateTime(), nullable=True),
        sa.Column("estimated_end_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_streams")),
    )
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_streams_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_experiment"), ["experiment"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_owner"), ["owner"], unique=False)
        batch_op.create_index(batch_op.f("ix_streams_state"), ["state"], unique=False)

    op.create_table(
        "stream_transitions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=True),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_transitions_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_transitions")),
    )
    with op.batch_alter_table("stream_transitions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_transitions_stream_id"), ["stream_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_transitions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_transitions_stream_id"))

    op.drop_table("stream_transitions")
    with op.batch_alter_table("streams", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_streams_state"))
        batch_op.drop_index(batch_op.f("ix_streams_owner"))
        batch_op.drop_index(batch_op.f("ix_streams_experiment"))
        batch_op.drop_index(batch_op.f("ix_streams_created_at"))

    op.drop_table("streams")
    with op.batch_alter_table("role_bindings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_role_bindings_subject"))

    op.drop_table("role_bindings")
    op.drop_table("revoked_credentials")
    op.drop_table("identities")
    op.drop_table("group_members")
    with op.batch_alter_table("experiment_grants", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experiment_grants_subject"))

    op.drop_table("experiment_grants")
    op.drop_table("datasets")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_identity"))
        batch_op.drop_index(batch_op.f("ix_audit_log_at"))

    op.drop_table("audit_log")
