"""Partition ownership: the fencing epoch every apply transaction checks, and the deployment's partition count."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String, Text, func
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt


class Partition(Base):
    """``epoch`` rises at every claim; a worker holding an older epoch cannot commit to the partition.

    ``owner`` is the worker that claimed it last. It owns the partition while it lives: until it releases it
    (``released_at``, a graceful exit) or stops heartbeating (its :class:`Worker` row expires).
    """

    __tablename__ = "partition"

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(BigInt, default=0, server_default="0")
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Set when ``owner`` exited gracefully (it gave the partition up); cleared by the next claim.
    released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
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


class Worker(Base):
    """A running ``seqproc worker`` process: it is alive while ``expires_at`` is ahead (it heartbeats every third of
    ``SEQPROC_LEASE_S``, from the consumer's loop); a graceful exit deletes the row."""

    __tablename__ = "seqproc_worker"

    #: The owner token it claims partitions with (``node/pid/run``).
    owner: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: What it was started for: ``--partitions`` as given (``0-7``, ``auto``).
    partitions: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"Worker(owner={self.owner!r}, partitions={self.partitions!r}, expires_at={self.expires_at!r})"
