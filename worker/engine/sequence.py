"""Loss detection, inside the apply transaction: each direct-publish message carries its producer and the number of
its first event on the partition (``seq``); the producer numbers its events of each partition 1, 2, 3, ...

Per message, in the order received: the expected number (``seqproc_producer_sequence.next_seq``, 1 for a producer
not seen yet) moves past it; a message that starts further on leaves a gap (``seqproc_sequence_gap``); one that
starts before (late, or redelivered) fills what it covers of an open gap, and is otherwise a copy (the ledger makes
its events duplicates). The store reads where the streams stand with the transaction's claim, and writes where they
moved (and the gaps) with its other writes: no round trip of their own (:func:`advance` decides in between). A gap
that outlives ``SEQPROC_LOSS_GRACE_S`` is declared lost by :func:`declare_lost` (a worker's heartbeat runs it): a
redelivery comes back within the visibility timeout, so the grace must exceed it.

The late messages' fills, the declarations and the totals are written with SQLAlchemy Core over the mapped tables:
the same on PostgreSQL and SQLite. The partition's fence makes its owner the only writer of its rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, func, insert, select, update

from seqproc.models.tables.base import table_of
from seqproc.models.tables.sequence import SequenceGap

logger = logging.getLogger(__name__)

GAPS = table_of(SequenceGap)


@dataclass(frozen=True, slots=True)
class Sequenced:
    """A message's place in its producer's sequence of the partition: events ``first`` .. ``first + count - 1``."""

    producer: str
    first: int
    count: int


@dataclass(frozen=True, slots=True)
class Gap:
    producer: str
    partition: int
    first: int
    count: int


#: ``(producer, partition)``: one producer's sequence of one partition.
Stream = tuple[str, int]


@dataclass
class Moves:
    """What a transaction's messages do to their producers' sequences (:func:`advance`), to be written with it."""

    #: The streams that moved on (or are new): their next expected number.
    next_seqs: dict[Stream, int] = field(default_factory=dict)
    #: The holes the messages left.
    gaps: list[Gap] = field(default_factory=list)
    #: Messages that came after later ones (late, or redelivered), by partition: they may fill a gap.
    late: list[tuple[int, Sequenced]] = field(default_factory=list)


def streams_of(batches: Iterable[tuple[int, Sequence[Sequenced]]]) -> list[Stream]:
    """The streams that ``(partition, messages)`` pairs touch, each once (to read where they stand)."""
    return list(dict.fromkeys((m.producer, partition) for partition, messages in batches for m in messages))


def advance(known: Mapping[Stream, int], batches: Iterable[tuple[int, Sequence[Sequenced]]]) -> Moves:
    """Move the streams past the messages of each ``(partition, messages)`` pair, in the order received; ``known``:
    where the streams stood (a stream not in it is new: it expects 1)."""
    moves = Moves()
    expected = dict(known)
    for partition, messages in batches:
        for message in messages:
            stream = (message.producer, partition)
            at = expected.get(stream, 1)
            if message.first > at:
                moves.gaps.append(Gap(message.producer, partition, at, message.first - at))
            elif message.first < at:
                moves.late.append((partition, message))
            expected[stream] = max(at, message.first + message.count)
    moves.next_seqs = {stream: n for stream, n in expected.items() if known.get(stream) != n}
    return moves


def fill_late(conn: Connection, moves: Moves) -> None:
    """The late messages of ``moves`` fill what they cover of the gaps recorded before (rare: a redelivery, a
    restore); statements of their own."""
    for partition, message in moves.late:
        _fill(conn, partition, message)


def _fill(conn: Connection, partition: int, message: Sequenced) -> None:
    """A late message: the part of any open gap it covers is no gap any more (what is left of the gap stays)."""
    start, end = message.first, message.first + message.count
    covered = conn.execute(
        select(GAPS.c.first_seq, GAPS.c.count, GAPS.c.detected_at, GAPS.c.declared_at).where(
            GAPS.c.producer == message.producer,
            GAPS.c.partition == partition,
            GAPS.c.first_seq < end,
            GAPS.c.first_seq + GAPS.c.count > start,
        )
    ).all()
    for first_seq, count, detected_at, declared_at in covered:
        if declared_at is not None:
            # Already counted lost (a counter never goes back): say that they came after all.
            logger.warning(
                "partition %d: events %d-%d of producer %s arrived after they were counted lost",
                partition,
                max(start, first_seq),
                min(end, first_seq + count) - 1,
                message.producer,
            )
            continue
        conn.execute(
            delete(GAPS).where(
                GAPS.c.producer == message.producer, GAPS.c.partition == partition, GAPS.c.first_seq == first_seq
            )
        )
        pieces = [(first_seq, start - first_seq), (end, first_seq + count - end)]
        for piece_first, piece_count in pieces:
            if piece_count > 0:
                conn.execute(
                    insert(GAPS).values(
                        producer=message.producer,
                        partition=partition,
                        first_seq=piece_first,
                        count=piece_count,
                        detected_at=detected_at,
                    )
                )


def declare_lost(conn: Connection, *, grace_s: float) -> list[Gap]:
    """Declare lost every gap open for longer than ``grace_s`` (one worker declares each: the update takes it).
    By the database's clock on PostgreSQL (the gaps' ``detected_at`` is its ``now()``)."""
    if conn.dialect.name == "postgresql":
        cutoff: Any = func.now() - timedelta(seconds=grace_s)
    else:
        cutoff = datetime.now(UTC) - timedelta(seconds=grace_s)
    rows = conn.execute(
        update(GAPS)
        .where(and_(GAPS.c.declared_at.is_(None), GAPS.c.detected_at < cutoff))
        .values(declared_at=func.now())
        .returning(GAPS.c.producer, GAPS.c.partition, GAPS.c.first_seq, GAPS.c.count)
    ).all()
    return [Gap(producer, int(partition), int(first), int(count)) for producer, partition, first, count in rows]


def lost_total(conn: Connection) -> int:
    """Events declared lost so far (every partition)."""
    return int(
        conn.execute(
            select(func.coalesce(func.sum(GAPS.c.count), 0)).where(GAPS.c.declared_at.isnot(None))
        ).scalar_one()
    )
