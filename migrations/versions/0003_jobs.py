"""scheduled jobs: job_run (one row per job and slot) and partition_lag

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_run",
        sa.Column("job", sa.String(length=64), nullable=False),
        sa.Column("slot", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("job", "slot", name=op.f("pk_job_run")),
    )
    op.create_table(
        "partition_lag",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("depth", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("oldest_age_s", sa.Float(), nullable=True),
        sa.Column("applied", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_partition_lag")),
    )
    op.create_index("ix_article_like_count_updated_at", "article_like_count", ["updated_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_article_like_count_updated_at", table_name="article_like_count")
    op.drop_table("partition_lag")
    op.drop_table("job_run")
