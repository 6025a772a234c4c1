"""worker liveness: seqproc_worker (each worker process's heartbeat) and partition.released_at

A partition whose owner exited gracefully (released_at set) or stopped heartbeating (its seqproc_worker row
expired) has no owner: a worker configured for it resumes it, and ``seqproc status`` shows it ownerless.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "seqproc_worker",
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("partitions", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner", name=op.f("pk_seqproc_worker")),
    )
    with op.batch_alter_table("partition") as batch:
        batch.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("partition") as batch:
        batch.drop_column("released_at")
    op.drop_table("seqproc_worker")
