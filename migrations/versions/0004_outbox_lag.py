"""partition_lag: the outbox's events per partition and the oldest one's age

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("partition_lag") as batch:
        batch.add_column(
            sa.Column(
                "outbox_depth",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                server_default="0",
                nullable=False,
            )
        )
        batch.add_column(sa.Column("outbox_oldest_age_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partition_lag") as batch:
        batch.drop_column("outbox_oldest_age_s")
        batch.drop_column("outbox_depth")
