"""The idempotency ledger and the dead-letter store."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, DateTime, Integer, String, Text, and_, func
from sqlalchemy.orm import Mapped, mapped_column

from seqproc.models.fields import LEDGER_KEY_LENGTH as LEDGER_KEY_LENGTH  # its historic home
from seqproc.models.fields import MAX_ENTITY_KEY_LENGTH, MAX_REASON_LENGTH
from seqproc.models.tables.base import Base, BigInt, now_column

#: Room for ``user@host`` or a Django user name (150 characters at most).
DISCARDED_BY_LENGTH = 255


class LedgerEntry(Base):
    """One row per applied idempotency key, written in the same transaction as the effect.

    ``status``/``reason`` hold the outcome of the first application, reported again to duplicates.
    """

    __tablename__ = "idempotency_ledger"

    key: Mapped[str] = mapped_column(String(LEDGER_KEY_LENGTH), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    event_type: Mapped[str] = mapped_column(String(64))
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(MAX_REASON_LENGTH), nullable=True)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)

    def __repr__(self) -> str:
        return f"LedgerEntry(key={self.key!r}, partition={self.partition}, status={self.status!r})"


class DeadLetter(Base):
    """A message or event that could not be applied, kept with its raw body and error.

    Open until it is closed one of three ways, each kept with when (the row stays): ``replayed_at`` (a parked key's
    replay applied it), ``retried_at`` and ``retried_as`` (``seqproc deadletter retry`` sent it again, under that
    idempotency key), ``discarded_at``, ``discarded_by`` and ``discard_reason`` (``seqproc deadletter discard``).
    """

    __tablename__ = "dead_letter"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    partition: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    queue: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: The event's idempotency key, when the event could be read far enough to have one.
    event_key: Mapped[str | None] = mapped_column(String(LEDGER_KEY_LENGTH), nullable=True, index=True)
    #: The entity (``article:42``, ``product:7``) of a valid event that could not be applied: what replay goes by.
    entity_key: Mapped[str | None] = mapped_column(String(MAX_ENTITY_KEY_LENGTH), nullable=True, index=True)
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: The body as received: text as is, anything else base64 with ``base64:`` in front.
    body: Mapped[str] = mapped_column(Text)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = now_column()
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    retried_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: The idempotency key(s) it was sent again with (comma-separated for a message of several events).
    retried_as: Mapped[str | None] = mapped_column(Text, nullable=True)
    discarded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    #: Who discarded it: ``user@host`` from the CLI, the user name from the Django admin.
    discarded_by: Mapped[str | None] = mapped_column(String(DISCARDED_BY_LENGTH), nullable=True)
    discard_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    @classmethod
    def is_open(cls) -> ColumnElement[bool]:
        """Neither replayed, retried nor discarded: what ``seqproc status`` counts and a replay may bring back."""
        return and_(cls.replayed_at.is_(None), cls.retried_at.is_(None), cls.discarded_at.is_(None))

    def __repr__(self) -> str:
        return f"DeadLetter(id={self.id}, partition={self.partition}, error={self.error[:60]!r})"


def dead_letter_state(*, replayed_at: object, retried_at: object, discarded_at: object) -> str:
    """``open``, or how a dead letter was closed: ``replayed``, ``retried`` or ``discarded``."""
    if replayed_at is not None:
        return "replayed"
    if retried_at is not None:
        return "retried"
    if discarded_at is not None:
        return "discarded"
    return "open"


class ParkedKey(Base):
    """An entity whose events go to the dead-letter store, in order, until ``seqproc deadletter replay`` (its first
    event failed for a reason other than a transient error). Other keys of the partition flow on."""

    __tablename__ = "parked_key"

    entity_key: Mapped[str] = mapped_column(String(MAX_ENTITY_KEY_LENGTH), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)
    parked_at: Mapped[datetime] = now_column()

    def __repr__(self) -> str:
        return f"ParkedKey(entity_key={self.entity_key!r}, partition={self.partition})"
