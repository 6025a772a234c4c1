"""Loss detection for direct publishes: where each producer's sequence of a partition stands, and its gaps.

A producer numbers the events it sends to each partition 1, 2, 3, ... (``seq`` in each message: its producer and the
number of its first event). The apply transaction moves ``next_seq`` on and records a hole as a gap; a late or
redelivered message that fills a gap removes it (not a loss). A gap still open after ``SEQPROC_LOSS_GRACE_S`` is
declared lost (``declared_at``): logged, counted (``seqproc_events_lost_total``) and shown by ``seqproc status``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.tables.base import Base, BigInt, now_column

#: ``gen<pid>@<host>/<random>``: room for a long host name.
PRODUCER_ID_LENGTH = 255


class ProducerSequence(Base):
    """The next event number expected from ``producer`` on ``partition``."""

    __tablename__ = "seqproc_producer_sequence"

    producer: Mapped[str] = mapped_column(String(PRODUCER_ID_LENGTH), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    next_seq: Mapped[int] = mapped_column(BigInt)
    seen_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"ProducerSequence(producer={self.producer!r}, partition={self.partition}, next_seq={self.next_seq})"


class SequenceGap(Base):
    """Events ``first_seq`` .. ``first_seq + count - 1`` of ``producer`` on ``partition`` never came (yet)."""

    __tablename__ = "seqproc_sequence_gap"

    producer: Mapped[str] = mapped_column(String(PRODUCER_ID_LENGTH), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_seq: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(BigInt)
    detected_at: Mapped[datetime] = now_column()
    #: Set once the gap outlived the grace: its events are counted lost.
    declared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True, index=True)

    def __repr__(self) -> str:
        return (
            f"SequenceGap(producer={self.producer!r}, partition={self.partition}, first_seq={self.first_seq}, "
            f"count={self.count})"
        )
