"""Stream credentials (token hashes, producer key, callback secret), job progress reports, consumer results.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_secrets",
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("consumer_token_user", sa.String(length=64), nullable=False),
        sa.Column("consumer_token_hash", sa.String(length=64), nullable=False),
        sa.Column("producer_public_key", sa.String(length=40), nullable=True),
        sa.Column("producer_token_user", sa.String(length=64), nullable=True),
        sa.Column("producer_token_hash", sa.String(length=64), nullable=True),
        sa.Column("report_secret", sa.String(length=64), nullable=True),
        sa.Column("report_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_secrets_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_stream_secrets")),
    )
    op.create_table(
        "stream_progress",
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=200), nullable=False),
        sa.Column("phase", sa.String(length=16), nullable=False),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_progress_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("stream_id", "address", name=op.f("pk_stream_progress")),
    )
    with op.batch_alter_table("stream_progress", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_progress_updated_at"), ["updated_at"], unique=False)

    op.create_table(
        "stream_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("address", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("group_name", sa.String(length=128), nullable=False),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("first_frame", sa.BigInteger(), nullable=True),
        sa.Column("last_frame", sa.BigInteger(), nullable=True),
        sa.Column("published_at", sa.DateTime(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("publisher", sa.String(length=200), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("buffer_instance", sa.String(length=32), nullable=False),
        sa.Column("buffer_id", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_results_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stream_results")),
        sa.UniqueConstraint("buffer_instance", "buffer_id", name=op.f("uq_stream_results_buffer_instance")),
    )
    with op.batch_alter_table("stream_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_results_stream_id"), ["stream_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_results_stream_id"))
    op.drop_table("stream_results")
    with op.batch_alter_table("stream_progress", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_progress_updated_at"))
    op.drop_table("stream_progress")
    op.drop_table("stream_secrets")
