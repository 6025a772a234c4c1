"""the outbox's identity and its copy of the partition count: seqproc_outbox_meta

Each outbox database gets an id of its own: its relays key their push counters in the broker by it
(``seqproc:relay:pushed:<outbox id>:<queue>``), so that several outbox databases can share one broker. The partition
count is written by ``seqproc migrate`` (and the relays, and ``seqproc partitions set``), copied from seqproc's
database: every outbox insert checks it.

Revision ID: outbox_0002
Revises: outbox_0001
Create Date: 2027-01-10
"""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from alembic import op

revision = "outbox_0002"
down_revision = "outbox_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        "seqproc_outbox_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_seqproc_outbox_meta")),
    )
    op.bulk_insert(meta, [{"name": "outbox_id", "value": uuid.uuid4().hex}])


def downgrade() -> None:
    op.drop_table("seqproc_outbox_meta")
