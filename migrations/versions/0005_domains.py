"""domains: room for namespaced event types in the ledger; the balance domain's account_balance

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("idempotency_ledger") as batch:
        batch.alter_column("event_type", type_=sa.String(length=64), existing_type=sa.String(length=16))
    op.create_table(
        "account_balance",
        sa.Column("account_id", BigInt, autoincrement=False, nullable=False),
        sa.Column("balance", BigInt, server_default="0", nullable=False),
        sa.Column("credited", BigInt, server_default="0", nullable=False),
        sa.Column("debited", BigInt, server_default="0", nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_account_balance_balance_non_negative")),
        sa.CheckConstraint(
            "balance = credited - debited", name=op.f("ck_account_balance_balance_is_credits_minus_debits")
        ),
        sa.PrimaryKeyConstraint("account_id", name=op.f("pk_account_balance")),
    )


def downgrade() -> None:
    op.drop_table("account_balance")
    with op.batch_alter_table("idempotency_ledger") as batch:
        # Types of the domains' events may be longer (``balance.transfer_out``): cut, or PostgreSQL refuses the
        # narrower type and no test database (nor anyone's) could be migrated down past this revision.
        batch.alter_column(
            "event_type",
            type_=sa.String(length=16),
            existing_type=sa.String(length=64),
            postgresql_using="left(event_type, 16)",
        )
