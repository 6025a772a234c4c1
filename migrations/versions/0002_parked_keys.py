"""parked keys, and the entity of each dead letter

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
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
        "parked_key",
        sa.Column("entity_key", sa.String(length=64), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("parked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("entity_key", name=op.f("pk_parked_key")),
    )
    with op.batch_alter_table("dead_letter") as batch:
        batch.add_column(sa.Column("entity_key", sa.String(length=64), nullable=True))
        batch.create_index(batch.f("ix_dead_letter_entity_key"), ["entity_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_letter") as batch:
        batch.drop_index(batch.f("ix_dead_letter_entity_key"))
        batch.drop_column("entity_key")
    op.drop_table("parked_key")
