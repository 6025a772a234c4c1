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
from worker.store import DeadLetterRecord, Writes, store_for

logger = logging.getLogger(__name__)

__all__ = ["BatchResult", "DeadLetterRecord", "apply_batch", "store_dead_letters"]


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
    store = store_for(conn)
    first_index: dict[str, int] = {}
    for index, event in enumerate(events):
        first_index.setdefault(event.ledger_key, index)
    candidates = sorted(first_index.values())
    like_events = [e for e in events if isinstance(e, Like | Unlike)]
    stock_events = [e for e in events if not isinstance(e, Like | Unlike)]
    loaded = store.claim_and_load(
        conn,
        partition,
        [(events[i].ledger_key, events[i].type) for i in candidates],
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

    writes = Writes(
        partition=partition,
        epoch=epoch,
        likes=likes.diff(loaded.pairs, final_pairs),
        stock=stock.diff(loaded.stock, final_stock),
        outcomes=[
            (events[i].ledger_key, decided[i])
            for i in fresh
            if decided[i].status != "applied" or decided[i].reason is not None
        ],
        dead_letters=dead_letters,
        applied=result.applied,
        duplicates=result.duplicates,
        rejected=result.rejected,
    )
    if not store.write(conn, writes):
        raise PartitionFenced(f"partition {partition}: epoch {epoch} is no longer current; another worker owns it")
    for record in dead_letters:
        logger.warning(
            "partition %s queue %s idempotency_key %s: dead-lettered: %s",
            record.partition,
            record.queue,
            record.event_key,
            record.error,
        )
    return result


def store_dead_letters(conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
    """Keep what could not be applied, with its raw body and error, until someone replays or discards it."""
    if records:
        store_for(conn).store_dead_letters(conn, records)
        for record in records:
            logger.warning(
                "partition %s queue %s idempotency_key %s: dead-lettered: %s",
                record.partition,
                record.queue,
                record.event_key,
                record.error,
            )
