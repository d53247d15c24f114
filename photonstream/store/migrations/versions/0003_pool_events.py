"""Elastic worker pools: their decisions (stream_pool_events) and the workers' buffer credential (stream_secrets).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("stream_secrets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("worker_public_key", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("worker_token_user", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("worker_token_hash", sa.String(length=64), nullable=True))

    op.create_table(
        "stream_pool_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("pool", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("workers", sa.Integer(), nullable=False),
        sa.Column("lag", sa.BigInteger(), nullable=True),
        sa.Column("members", sa.Integer(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("jobs", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_pool_events_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_pool_events")),
    )
    with op.batch_alter_table("stream_pool_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_pool_events_stream_id"), ["stream_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_pool_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_pool_events_stream_id"))
    op.drop_table("stream_pool_events")
    with op.batch_alter_table("stream_secrets", schema=None) as batch_op:
        batch_op.drop_column("worker_token_hash")
        batch_op.drop_column("worker_token_user")
        batch_op.drop_column("worker_public_key")
