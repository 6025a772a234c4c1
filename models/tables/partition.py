"""Partition ownership: the fencing epoch every apply transaction checks, and the deployment's partition count."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt


class Partition(Base):
    """``epoch`` rises at every claim; a worker holding an older epoch cannot commit to the partition."""

    __tablename__ = "partition"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Running totals, for status views; the ledger holds the per-event truth.
    applied: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    duplicates: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    rejected: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")

    def __repr__(self) -> str:
        return f"Partition(partition={self.partition}, epoch={self.epoch}, owner={self.owner!r})"


class Meta(Base):
    """Deployment-wide facts, such as the partition count the data was routed with."""

    __tablename__ = "seqproc_meta"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"Meta(name={self.name!r}, value={self.value!r})"
