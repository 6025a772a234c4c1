"""What the apply transaction needs from the database for every domain (the ledger, parked keys, dead letters,
outcomes, the partitions' counters and fences; each domain reads and writes its own tables), in two implementations:

- ``postgres``: PostgreSQL, set-based statements over arrays (``unnest``), constant SQL text (prepared by psycopg
  after a few uses), sent in pipelines: one round trip to claim the keys, one to write everything and check the
  fence;
- ``portable``: SQLAlchemy Core (SQLite: the embedded mode and the unit tests).

Both obey the same contract, and the same property tests run against both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import Connection

from seqproc.models.outcomes import Outcome, Status

#: The status a claimed key starts with: most events are applied plainly, so only the others need a second write.
CLAIMED_STATUS = "applied"


@dataclass(frozen=True)
class DeadLetterRecord:
    """Something that could not be applied, to be stored with the batch (same transaction as its ack)."""

    error: str
    body: str
    partition: int | None = None
    queue: str | None = None
    event_key: str | None = None
    content_type: str | None = None
    #: The entity of a valid event that could not be applied (what replay goes by).
    entity_key: str | None = None
    #: The ids of the events it holds that could be read (not stored: the body has them): each gets a ``rejected``
    #: outcome with reason ``dead_lettered`` once the letter is committed, so that its waiter hears at once.
    event_ids: tuple[str, ...] = ()


@dataclass
class Loaded:
    #: The keys this transaction claimed: their events are new; the other keys are duplicates.
    new_keys: set[str]
    #: The entities among those asked about that are parked.
    parked: set[str] = field(default_factory=set)


@dataclass
class Fence:
    """One partition of the transaction: its counters, and the epoch to check (None: no check, for tools and tests
    applying directly)."""

    partition: int
    epoch: int | None
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass
class Writes:
    fences: list[Fence] = field(default_factory=list)
    #: Outcomes of claimed keys that are not a plain "applied" (claimed keys start as that).
    outcomes: list[tuple[str, Outcome]] = field(default_factory=list)
    dead_letters: Sequence[DeadLetterRecord] = ()
    #: Claimed keys to give back: their events were dead-lettered (parked entity), a replay must find them new.
    unclaim: list[str] = field(default_factory=list)
    #: Entities to park (entity, partition, reason) and to unpark.
    park: list[tuple[str, int, str]] = field(default_factory=list)
    unpark: list[str] = field(default_factory=list)
    #: Dead letters applied by a replay.
    replayed: list[int] = field(default_factory=list)
    #: Producers' sequences moved on, or seen for the first time: (producer, partition, next number expected).
    sequences: list[tuple[str, int, int]] = field(default_factory=list)
    #: Holes found in them: (producer, partition, first number missing, how many).
    gaps: list[tuple[str, int, int, int]] = field(default_factory=list)


class Store(Protocol):
    def claim(
        self, conn: Connection, keys: Sequence[tuple[str, str, int]], entity_keys: Sequence[str]
    ) -> Callable[[], Loaded]:
        """Insert the ``(key, event_type, partition)`` rows into the ledger (``ON CONFLICT DO NOTHING RETURNING``) and
        ask which of ``entity_keys`` are parked; the answer is read when the returned function is called (on
        PostgreSQL, statements issued before that, in the same pipeline, share the round trip)."""
        ...

    def load_sequences(
        self, conn: Connection, streams: Sequence[tuple[str, int]]
    ) -> Callable[[], dict[tuple[str, int], int]]:
        """Where each ``(producer, partition)`` of ``streams`` stands (the next number expected; a stream never seen
        is left out); read when the returned function is called (on PostgreSQL, in the round trip of the claim that
        encloses it)."""
        ...

    def load_replay(
        self, conn: Connection, entity_keys: Sequence[str]
    ) -> tuple[dict[str, list[tuple[int, str]]], set[str]]:
        """The open dead letters of each entity (not replayed, retried or discarded), oldest first, as (id, body);
        and which are parked."""
        ...

    def first_outcomes(self, conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
        """The recorded outcome of each of ``keys`` that the ledger holds."""
        ...

    def write(self, conn: Connection, writes: Writes) -> Callable[[], list[int]]:
        """Write the outcomes, dead letters, producers' sequences and their gaps, and counters; check each partition's
        fencing epoch last (under the
        partition row's lock). The function returned gives the partitions whose epoch is no longer current (on
        PostgreSQL, read once the round trip that carries the writes is done): if any, the caller must roll back."""
        ...

    def store_dead_letters(self, conn: Connection, records: Sequence[DeadLetterRecord]) -> None: ...


def status_of(value: str | None) -> Status:
    """A ledger row's status as an outcome's (a claimed key not decided otherwise was applied)."""
    if value in ("applied", "rejected"):
        return value  # type: ignore[return-value]
    return "applied"


def dead_letter_row(d: DeadLetterRecord) -> dict[str, object]:
    """The ``dead_letter`` row of ``d`` (both stores insert it)."""
    return {
        "partition": d.partition,
        "queue": d.queue,
        "event_key": d.event_key,
        "entity_key": d.entity_key,
        "content_type": d.content_type,
        "body": d.body,
        "error": d.error,
    }


def store_for(conn: Connection) -> Store:
    if conn.dialect.name == "postgresql":
        from seqproc.worker.engine.store.postgres import PostgresStore

        return PostgresStore()
    from seqproc.worker.engine.store.portable import SqlStore

    return SqlStore()
