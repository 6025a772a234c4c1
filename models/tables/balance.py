"""The balance domain's table: one row per account, its invariants as constraints."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt, now_column


class AccountBalance(Base):
    """Invariants: ``balance >= 0`` and ``balance == credited - debited`` (applied credits minus applied debits)."""

    __tablename__ = "account_balance"
    __table_args__ = (
        CheckConstraint("balance >= 0", name="balance_non_negative"),
        CheckConstraint("balance = credited - debited", name="balance_is_credits_minus_debits"),
    )

    account_id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    credited: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    debited: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    updated_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"AccountBalance(account_id={self.account_id}, balance={self.balance})"
