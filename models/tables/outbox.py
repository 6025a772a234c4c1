"""The transactional outbox: events written in the application's own transaction, sent by ``seqproc relay``.

These tables live in the application's database (``SEQPROC_OUTBOX_DATABASE_URL``; by default seqproc's own), so
they have their own metadata and their own migrations (``seqproc.migrations.outbox``, version table
``seqproc_outbox_version``), apart from seqproc's tables.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, MetaData, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from seqproc.models.fields import LEDGER_KEY_LENGTH
from seqproc.models.tables.base import NAMING_CONVENTION, BigInt, now_column

#: The outbox table's name: application code writes to it (``seqproc.outbox``), inside its own transaction.
OUTBOX_TABLE = "seqproc_outbox"
#: The relay's record of how many messages it pushed onto each partition queue.
RELAY_TABLE = "seqproc_outbox_relay"
#: The outbox database's identity and its copy of the deployment's partition count.
OUTBOX_META_TABLE = "seqproc_outbox_meta"
#: ``seqproc_outbox_meta`` names: the outbox's id (made by its migration), the partition count (``seqproc migrate``,
#: the relays and ``seqproc partitions set`` copy it from seqproc's database).
OUTBOX_ID = "outbox_id"
OUTBOX_PARTITION_COUNT = "partition_count"


class OutboxBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class OutboxEvent(OutboxBase):
    """One event, committed with the caller's transaction, kept until the worker has applied it (the ledger holds
    its key).

    ``push_seq`` is None until the relay sends it; then it is the number of the message that carried it in its
    partition queue's push counter (``seqproc:relay:pushed:<outbox id>:<queue>`` in the broker): a broker that lost
    messages is caught by its counter going back, and the events of the lost messages are sent again.
    """

    __tablename__ = OUTBOX_TABLE

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    partition: Mapped[int] = mapped_column(Integer)
    ledger_key: Mapped[str] = mapped_column(String(LEDGER_KEY_LENGTH))
    event_id: Mapped[str] = mapped_column(String(64))
    #: The event in wire form (JSON), validated when it was written.
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    push_seq: Mapped[int | None] = mapped_column(BigInt, nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        # What the relay reads: unsent events, per partition, in order.
        Index("ix_seqproc_outbox_unsent", "partition", "id", postgresql_where=text("push_seq IS NULL")),
        # What it checks against the ledger and resends after a loss: sent events, per partition, by message.
        Index("ix_seqproc_outbox_sent", "partition", "push_seq", postgresql_where=text("push_seq IS NOT NULL")),
    )

    def __repr__(self) -> str:
        return f"OutboxEvent(id={self.id}, partition={self.partition}, key={self.ledger_key!r}, sent={self.push_seq})"


class RelayPartition(OutboxBase):
    """How many messages the relays pushed onto a partition queue: the broker's counter must match it."""

    __tablename__ = RELAY_TABLE

    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    pushed: Mapped[int] = mapped_column(BigInt, default=0)

    def __repr__(self) -> str:
        return f"RelayPartition(partition={self.partition}, pushed={self.pushed})"


class OutboxMeta(OutboxBase):
    """Facts of this outbox database: its id (``outbox_id``: its relays' push counters in the broker are keyed by it,
    so that several outbox databases can share a broker) and the deployment's partition count (``partition_count``,
    a copy of seqproc's record: every outbox insert checks it)."""

    __tablename__ = OUTBOX_META_TABLE

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(255))

    def __repr__(self) -> str:
        return f"OutboxMeta(name={self.name!r}, value={self.value!r})"
