"""The ends the API owes failed and cancelled streams in the buffer, pending until delivered (stream_buffer_ends).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_buffer_ends",
        sa.Column("stream_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("addresses", sa.JSON(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("delivered_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["stream_id"], ["streams.id"], name=op.f("fk_stream_buffer_ends_stream_id_streams"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("stream_id", name=op.f("pk_stream_buffer_ends")),
    )
    with op.batch_alter_table("stream_buffer_ends", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stream_buffer_ends_recorded_at"), ["recorded_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_stream_buffer_ends_delivered_at"), ["delivered_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("stream_buffer_ends", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stream_buffer_ends_delivered_at"))
        batch_op.drop_index(batch_op.f("ix_stream_buffer_ends_recorded_at"))
    op.drop_table("stream_buffer_ends")
