"""Scheduled jobs' bookkeeping: one row per (job, slot), and the latest lag snapshot per partition."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt, now_column


class JobRun(Base):
    """The primary key (job, slot) makes a second fire of the same scheduled slot do nothing."""

    __tablename__ = "job_run"

    job: Mapped[str] = mapped_column(String(64), primary_key=True)
    slot: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = now_column()
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    def __repr__(self) -> str:
        return f"JobRun(job={self.job!r}, slot={self.slot.isoformat()}, status={self.status!r})"


class PartitionLag(Base):
    """The latest lag snapshot of a partition (the snapshot job writes it; alerting can read it)."""

    __tablename__ = "partition_lag"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    depth: Mapped[int] = mapped_column(BigInt)
    oldest_age_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    applied: Mapped[int] = mapped_column(BigInt)
    #: Events of the partition committed to the transactional outbox, not applied yet, and the oldest one's age.
    outbox_depth: Mapped[int] = mapped_column(BigInt, server_default="0")
    outbox_oldest_age_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"PartitionLag(partition={self.partition}, depth={self.depth}, oldest_age_s={self.oldest_age_s})"
