"""Apply a batch of one partition's events in ONE transaction, exactly once per idempotency key.

1. claim the batch's keys in the ledger (``INSERT ... ON CONFLICT DO NOTHING RETURNING``) and load the touched rows;
   keys already in the ledger (or earlier in the batch) are duplicates: they change nothing and report the first
   outcome of their key;
2. apply the new events in order with the domain rules (pure functions, ``worker.likes``/``worker.stock``), in memory;
3. write the rows that changed, the outcomes, the dead letters, the partition's counters, and check its fencing
   epoch, last (a worker that lost the partition cannot commit).
The caller commits, then acks. This module knows nothing of Celery: it takes a connection and events.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection

from models.errors import PartitionFenced
from models.events import Event, Like, Unlike
from models.outcomes import Outcome
from worker import likes, stock
from worker.store import DeadLetterRecord, Fence, Writes, store_for

logger = logging.getLogger(__name__)

__all__ = ["BatchResult", "DeadLetterRecord", "PartitionBatch", "apply_batch", "apply_partitions", "store_dead_letters"]


@dataclass
class BatchResult:
    outcomes: list[Outcome] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class PartitionBatch:
    """The events of one partition, in the order received, with the epoch this worker holds for it (None: no fence
    check, for tools and tests applying directly) and what could not be decoded, to be stored alongside."""

    partition: int
    events: Sequence[Event]
    epoch: int | None
    dead_letters: Sequence[DeadLetterRecord] = ()


def apply_batch(
    conn: Connection,
    partition: int,
    events: Sequence[Event],
    *,
    epoch: int | None,
    dead_letters: Sequence[DeadLetterRecord] = (),
) -> BatchResult:
    """Apply the events of one partition inside the caller's transaction; see :func:`apply_partitions`."""
    return apply_partitions(conn, [PartitionBatch(partition, events, epoch, dead_letters)])[0]


def apply_partitions(conn: Connection, batches: Sequence[PartitionBatch]) -> list[BatchResult]:
    """Apply several partitions' batches inside the caller's ONE transaction; one outcome per event, per batch.

    Keys never cross partitions and neither do articles or products, so the partitions are independent; sharing the
    transaction (and its round trips and its commit) is what makes many small batches cheap. Raises
    :class:`PartitionFenced` naming every partition whose epoch is no longer current: roll back then.
    """
    store = store_for(conn)
    events = [event for batch in batches for event in batch.events]
    owner = [n for n, batch in enumerate(batches) for _ in batch.events]
    first_index: dict[str, int] = {}
    for index, event in enumerate(events):
        first_index.setdefault(event.ledger_key, index)
    candidates = sorted(first_index.values())
    like_events = [e for e in events if isinstance(e, Like | Unlike)]
    stock_events = [e for e in events if not isinstance(e, Like | Unlike)]
    loaded = store.claim_and_load(
        conn,
        [(events[i].ledger_key, events[i].type, batches[owner[i]].partition) for i in candidates],
        list(dict.fromkeys((e.article_id, e.user_id) for e in like_events)),
        sorted({e.product_id for e in stock_events}),
        sorted({e.reservation_id for e in stock_events if e.type != "restock"}),
    )
    fresh = [i for i in candidates if events[i].ledger_key in loaded.new_keys]
    seen_before = store.first_outcomes(
        conn, [events[i].ledger_key for i in candidates if events[i].ledger_key not in loaded.new_keys]
    )

    fresh_likes = [i for i in fresh if isinstance(events[i], Like | Unlike)]
    fresh_stock = [i for i in fresh if not isinstance(events[i], Like | Unlike)]
    final_pairs, like_outcomes = likes.evaluate(loaded.pairs, [events[i] for i in fresh_likes])  # type: ignore[misc]
    final_stock, stock_outcomes = stock.evaluate(loaded.stock, [events[i] for i in fresh_stock])  # type: ignore[misc]
    decided = dict(zip(fresh_likes, like_outcomes, strict=True)) | dict(zip(fresh_stock, stock_outcomes, strict=True))

    results = [BatchResult() for _ in batches]
    for index, event in enumerate(events):
        if index in decided:
            outcome = decided[index]
        else:
            first = decided.get(first_index[event.ledger_key]) or seen_before.get(event.ledger_key)
            outcome = Outcome("duplicate", first=first)
        result = results[owner[index]]
        result.outcomes.append(outcome)
        if outcome.status == "applied":
            result.applied += 1
        elif outcome.status == "duplicate":
            result.duplicates += 1
        else:
            result.rejected += 1

    dead_letters = [record for batch in batches for record in batch.dead_letters]
    writes = Writes(
        fences=[
            Fence(batch.partition, batch.epoch, result.applied, result.duplicates, result.rejected)
            for batch, result in zip(batches, results, strict=True)
        ],
        likes=likes.diff(loaded.pairs, final_pairs),
        stock=stock.diff(loaded.stock, final_stock),
        outcomes=[
            (events[i].ledger_key, decided[i])
            for i in fresh
            if decided[i].status != "applied" or decided[i].reason is not None
        ],
        dead_letters=dead_letters,
    )
    fenced = store.write(conn, writes)
    if fenced:
        epochs = {batch.partition: batch.epoch for batch in batches}
        raise PartitionFenced(
            "; ".join(f"partition {p}: epoch {epochs[p]} is no longer current, another worker owns it" for p in fenced),
            partitions=fenced,
        )
    _log_dead_letters(dead_letters)
    return results


def store_dead_letters(conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
    """Keep what could not be applied, with its raw body and error, until someone replays or discards it."""
    if records:
        store_for(conn).store_dead_letters(conn, records)
        _log_dead_letters(records)


def _log_dead_letters(records: Sequence[DeadLetterRecord]) -> None:
    for record in records:
        logger.warning(
            "partition %s queue %s idempotency_key %s: dead-lettered: %s",
            record.partition,
            record.queue,
            record.event_key,
            record.error,
        )
