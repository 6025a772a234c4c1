"""the transactional outbox: seqproc_outbox and seqproc_outbox_relay

Revision ID: outbox_0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "outbox_0001"
down_revision = None
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "seqproc_outbox",
        sa.Column("id", BigInt, autoincrement=True, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("ledger_key", sa.String(length=160), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("push_seq", BigInt, nullable=True),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_seqproc_outbox")),
    )
    op.create_index(
        "ix_seqproc_outbox_unsent",
        "seqproc_outbox",
        ["partition", "id"],
        postgresql_where=sa.text("push_seq IS NULL"),
    )
    op.create_index(
        "ix_seqproc_outbox_sent",
        "seqproc_outbox",
        ["partition", "push_seq"],
        postgresql_where=sa.text("push_seq IS NOT NULL"),
    )
    op.create_table(
        "seqproc_outbox_relay",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("pushed", BigInt, nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_seqproc_outbox_relay")),
    )


def downgrade() -> None:
    op.drop_table("seqproc_outbox_relay")
    op.drop_index("ix_seqproc_outbox_sent", table_name="seqproc_outbox")
    op.drop_index("ix_seqproc_outbox_unsent", table_name="seqproc_outbox")
    op.drop_table("seqproc_outbox")
