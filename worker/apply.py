"""Apply a batch of one partition's events in ONE transaction, exactly once per idempotency key.

1. claim the batch's keys in the ledger; keys already there (or earlier in the batch) are duplicates;
2. apply the new events in order with the domain rules (likes, stock), in memory, then write the touched rows;
3. record each new key's outcome in the ledger;
4. check the partition's fencing epoch (a worker that lost the partition cannot commit), bumping its counters.
The caller commits, then acks. This module knows nothing of Celery: it takes a connection and events.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, insert, update

from models.base import table_of
from models.errors import PartitionFenced
from models.events import Event, Like, Unlike
from models.ledger import DeadLetter
from models.outcomes import Outcome
from models.partition import Partition
from worker import ledger
from worker.likes import apply_likes
from worker.stock import StockEvent, apply_stock

logger = logging.getLogger(__name__)

PARTITIONS = table_of(Partition)
DEAD_LETTERS = table_of(DeadLetter)


@dataclass(frozen=True)
class DeadLetterRecord:
    """Something that could not be applied, to be stored with the batch (same transaction as its ack)."""

    error: str
    body: str
    partition: int | None = None
    queue: str | None = None
    event_key: str | None = None
    content_type: str | None = None


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


def apply_batch(
    conn: Connection,
    partition: int,
    events: Sequence[Event],
    *,
    epoch: int | None,
    dead_letters: Sequence[DeadLetterRecord] = (),
) -> BatchResult:
    """Apply ``events`` (in the order received) inside the caller's transaction; one outcome per event.

    ``epoch``: the fencing epoch this worker holds for ``partition``; None skips the check (tools and tests that
    apply directly). Raises :class:`PartitionFenced` if the epoch is no longer current: roll back then.
    """
    first_index: dict[str, int] = {}
    candidates: list[int] = []
    for index, event in enumerate(events):
        if event.ledger_key not in first_index:
            first_index[event.ledger_key] = index
            candidates.append(index)
    new_keys = ledger.claim(conn, partition, [(events[i].ledger_key, events[i].type) for i in candidates])
    seen_before = ledger.first_outcomes(
        conn, [events[i].ledger_key for i in candidates if events[i].ledger_key not in new_keys]
    )

    fresh = [i for i in candidates if events[i].ledger_key in new_keys]
    like_indexes = [i for i in fresh if isinstance(events[i], Like | Unlike)]
    stock_indexes = [i for i in fresh if not isinstance(events[i], Like | Unlike)]
    decided: dict[int, Outcome] = {}
    like_events: list[Like | Unlike] = [events[i] for i in like_indexes]  # type: ignore[misc]
    stock_events: list[StockEvent] = [events[i] for i in stock_indexes]  # type: ignore[misc]
    decided.update(zip(like_indexes, apply_likes(conn, like_events), strict=True))
    decided.update(zip(stock_indexes, apply_stock(conn, stock_events), strict=True))
    ledger.record(conn, [(events[i].ledger_key, decided[i]) for i in fresh])

    result = BatchResult()
    for index, event in enumerate(events):
        if index in decided:
            outcome = decided[index]
        else:
            first = decided.get(first_index[event.ledger_key]) or seen_before.get(event.ledger_key)
            outcome = Outcome("duplicate", first=first)
        result.outcomes.append(outcome)
        if outcome.status == "applied":
            result.applied += 1
        elif outcome.status == "duplicate":
            result.duplicates += 1
        else:
            result.rejected += 1

    store_dead_letters(conn, dead_letters)
    if epoch is not None:
        fence(conn, partition, epoch, result)
    return result


def store_dead_letters(conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
    """Keep what could not be applied, with its raw body and error, until someone replays or discards it."""
    if not records:
        return
    conn.execute(
        insert(DEAD_LETTERS),
        [
            {
                "partition": d.partition,
                "queue": d.queue,
                "event_key": d.event_key,
                "content_type": d.content_type,
                "body": d.body,
                "error": d.error,
            }
            for d in records
        ],
    )
    for d in records:
        logger.warning(
            "partition %s queue %s idempotency_key %s: dead-lettered: %s",
            d.partition,
            d.queue,
            d.event_key,
            d.error,
        )


def fence(conn: Connection, partition: int, epoch: int, result: BatchResult) -> None:
    """Check, last thing before commit, that ``epoch`` is still the partition's current one.

    The UPDATE takes the partition row's lock, so a takeover (which raises the epoch with an UPDATE of the same row)
    is ordered strictly before or after this transaction: never both committing as owner.
    """
    updated = conn.execute(
        update(PARTITIONS)
        .where(PARTITIONS.c.partition == partition, PARTITIONS.c.epoch == epoch)
        .values(
            applied=PARTITIONS.c.applied + result.applied,
            duplicates=PARTITIONS.c.duplicates + result.duplicates,
            rejected=PARTITIONS.c.rejected + result.rejected,
        )
    )
    if updated.rowcount != 1:
        raise PartitionFenced(f"partition {partition}: epoch {epoch} is no longer current; another worker owns it")
