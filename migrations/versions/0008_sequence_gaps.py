"""loss detection: seqproc_producer_sequence (where each producer's sequence of a partition stands) and
seqproc_sequence_gap (the events that never came; declared lost after the grace)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "seqproc_producer_sequence",
        sa.Column("producer", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("next_seq", BIGINT, nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("producer", "partition", name=op.f("pk_seqproc_producer_sequence")),
    )
    op.create_table(
        "seqproc_sequence_gap",
        sa.Column("producer", sa.String(length=255), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False, autoincrement=False),
        sa.Column("first_seq", BIGINT, nullable=False, autoincrement=False),
        sa.Column("count", BIGINT, nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("declared_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("producer", "partition", "first_seq", name=op.f("pk_seqproc_sequence_gap")),
    )
    op.create_index(op.f("ix_seqproc_sequence_gap_declared_at"), "seqproc_sequence_gap", ["declared_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_seqproc_sequence_gap_declared_at"), table_name="seqproc_sequence_gap")
    op.drop_table("seqproc_sequence_gap")
    op.drop_table("seqproc_producer_sequence")
