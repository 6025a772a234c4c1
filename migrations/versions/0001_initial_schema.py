"""initial schema

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-25 11:23:48.386189
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "article_like",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("stamp", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("liked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("article_id", "user_id", name=op.f("pk_article_like")),
    )
    op.create_table(
        "article_like_count",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "like_count",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint("like_count >= 0", name=op.f("ck_article_like_count_like_count_non_negative")),
        sa.PrimaryKeyConstraint("article_id", name=op.f("pk_article_like_count")),
    )
    op.create_table(
        "article_unlike",
        sa.Column("article_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("stamp", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("unliked_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("article_id", "user_id", name=op.f("pk_article_unlike")),
    )
    op.create_table(
        "dead_letter",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("partition", sa.Integer(), nullable=True),
        sa.Column("queue", sa.String(length=64), nullable=True),
        sa.Column("event_key", sa.String(length=160), nullable=True),
        sa.Column("content_type", sa.String(length=128), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letter")),
    )
    op.create_index(op.f("ix_dead_letter_event_key"), "dead_letter", ["event_key"], unique=False)
    op.create_index(op.f("ix_dead_letter_partition"), "dead_letter", ["partition"], unique=False)
    op.create_table(
        "idempotency_ledger",
        sa.Column("key", sa.String(length=160), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_ledger")),
    )
    op.create_index(op.f("ix_idempotency_ledger_applied_at"), "idempotency_ledger", ["applied_at"], unique=False)
    op.create_table(
        "partition",
        sa.Column("partition", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("epoch", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), server_default="0", nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "applied",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "duplicates",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "rejected",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("partition", name=op.f("pk_partition")),
    )
    op.create_table(
        "product_stock",
        sa.Column("product_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "available",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column(
            "reserved",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column("sold", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), server_default="0", nullable=False),
        sa.Column(
            "total_received",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default="0",
            nullable=False,
        ),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.CheckConstraint(
            "available + reserved + sold = total_received", name=op.f("ck_product_stock_quantities_balance")
        ),
        sa.CheckConstraint("available >= 0", name=op.f("ck_product_stock_available_non_negative")),
        sa.CheckConstraint("reserved >= 0", name=op.f("ck_product_stock_reserved_non_negative")),
        sa.CheckConstraint("sold >= 0", name=op.f("ck_product_stock_sold_non_negative")),
        sa.PrimaryKeyConstraint("product_id", name=op.f("pk_product_stock")),
    )
    op.create_table(
        "reservation",
        sa.Column("reservation_id", sa.String(length=128), nullable=False),
        sa.Column("product_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("quantity", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'released', 'committed', 'cancelled', 'rejected')",
            name=op.f("ck_reservation_status_known"),
        ),
        sa.CheckConstraint("quantity >= 0", name=op.f("ck_reservation_quantity_non_negative")),
        sa.PrimaryKeyConstraint("reservation_id", name=op.f("pk_reservation")),
    )
    op.create_index("ix_reservation_active_expiry", "reservation", ["status", "expires_at"], unique=False)
    op.create_index(op.f("ix_reservation_product_id"), "reservation", ["product_id"], unique=False)
    op.create_table(
        "seqproc_meta",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_seqproc_meta")),
    )


def downgrade() -> None:
    op.drop_table("seqproc_meta")
    op.drop_index(op.f("ix_reservation_product_id"), table_name="reservation")
    op.drop_index("ix_reservation_active_expiry", table_name="reservation")
    op.drop_table("reservation")
    op.drop_table("product_stock")
    op.drop_table("partition")
    op.drop_index(op.f("ix_idempotency_ledger_applied_at"), table_name="idempotency_ledger")
    op.drop_table("idempotency_ledger")
    op.drop_index(op.f("ix_dead_letter_partition"), table_name="dead_letter")
    op.drop_index(op.f("ix_dead_letter_event_key"), table_name="dead_letter")
    op.drop_table("dead_letter")
    op.drop_table("article_unlike")
    op.drop_table("article_like_count")
    op.drop_table("article_like")
