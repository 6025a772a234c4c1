"""dead letters closed by a retry or a discard, kept with when, as what and why

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.add_column(sa.Column("retried_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("retried_as", sa.Text(), nullable=True))
        batch.add_column(sa.Column("discarded_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("discarded_by", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("discard_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    # The schema before knows one way to close a letter (replayed_at): a retried or discarded letter must stay closed
    # there, or the older code would count it as open and a replay of its key would apply a discarded event.
    op.execute(
        "UPDATE dead_letter SET replayed_at = COALESCE(retried_at, discarded_at) "
        "WHERE replayed_at IS NULL AND (retried_at IS NOT NULL OR discarded_at IS NOT NULL)"
    )
    with op.batch_alter_table("dead_letter") as batch:
        for column in ("discard_reason", "discarded_by", "discarded_at", "retried_as", "retried_at"):
            batch.drop_column(column)
