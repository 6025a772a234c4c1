"""Loss detection, inside the apply transaction: each direct-publish message carries its producer and the number of
its first event on the partition (``seq``); the producer numbers its events of each partition 1, 2, 3, ...

Per message, in the order received: the expected number (``seqproc_producer_sequence.next_seq``, 1 for a producer
not seen yet) moves past it; a message that starts further on leaves a gap (``seqproc_sequence_gap``); one that
starts before (late, or redelivered) fills what it covers of an open gap, and is otherwise a copy (the ledger makes
its events duplicates). A producer's mark (``producer.marks``) is a message of no event: where the producer's
sequence stood, which reveals a lost tail no later event would. The store reads where the streams stand with the
transaction's claim, and writes where they moved (and the gaps) with its other writes: no round trip of their own
(:func:`advance` decides in between). A gap that outlives ``SEQPROC_LOSS_GRACE_S`` is declared lost by
:func:`declare_lost` (a worker's heartbeat runs it): a redelivery comes back within the visibility timeout, so the
grace must exceed it.

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
            elif message.first < at and message.count:  # (a mark, no event, fills nothing: where its producer stood)
                moves.gaps = _filled(moves.gaps, partition, message)  # a hole this batch opened, filled in it
                moves.late.append((partition, message))  # and what was recorded before, by the store
            expected[stream] = max(at, message.first + message.count)
    moves.next_seqs = {stream: n for stream, n in expected.items() if known.get(stream) != n}
    return moves


def _filled(gaps: list[Gap], partition: int, message: Sequenced) -> list[Gap]:
    """``gaps`` less what ``message`` (late, of ``partition``) covers of them: what is left of each stays."""
    start, end = message.first, message.first + message.count
    left: list[Gap] = []
    for gap in gaps:
        if (
            gap.producer != message.producer
            or gap.partition != partition
            or gap.first >= end
            or gap.first + gap.count <= start
        ):
            left.append(gap)
            continue
        pieces = [(gap.first, start - gap.first), (end, gap.first + gap.count - end)]
        left += [Gap(gap.producer, partition, first, count) for first, count in pieces if count > 0]
    return left


def fill_late(conn: Connection, moves: Moves) -> None:
    """The late messages of ``moves`` fill what they cover of the gaps recorded before (rare: a redelivery, a
    restore, a failover); one read per partition, whatever their number."""
    by_partition: dict[int, list[Sequenced]] = {}
    for partition, message in moves.late:
        by_partition.setdefault(partition, []).append(message)
    for partition, late in by_partition.items():
        _fill(conn, partition, late, [])


@dataclass(slots=True)
class _Hole:
    """A gap while a batch is checked: recorded already (``stored``) or opened by this batch."""

    producer: str
    first: int
    count: int
    detected_at: Any = None
    declared_at: Any = None
    stored: bool = False


def _fill(conn: Connection, partition: int, late: Sequence[Sequenced], opened: list[_Hole]) -> list[_Hole]:
    """Late messages (redelivered, or held up): the part of any open gap they cover is no gap any more (what is left
    of it stays), whether the gap was recorded before or opened by this batch. One read of the recorded gaps they
    may touch, whatever their number (a failover brings back hundreds at once, most of them touching none).
    Returns what is left of ``opened``."""
    start, end = min(m.first for m in late), max(m.first + m.count for m in late)
    holes = [
        _Hole(producer, int(first_seq), int(count), detected_at, declared_at, stored=True)
        for producer, first_seq, count, detected_at, declared_at in conn.execute(
            select(GAPS.c.producer, GAPS.c.first_seq, GAPS.c.count, GAPS.c.detected_at, GAPS.c.declared_at).where(
                GAPS.c.partition == partition,
                GAPS.c.producer.in_(sorted({m.producer for m in late})),
                GAPS.c.first_seq < end,
                GAPS.c.first_seq + GAPS.c.count > start,
            )
        )
    ]
    holes += opened
    removed: list[_Hole] = []
    for message in late:
        m_start, m_end = message.first, message.first + message.count
        for hole in [h for h in holes if h.producer == message.producer]:
            if hole.first >= m_end or hole.first + hole.count <= m_start:
                continue
            if hole.declared_at is not None:
                # Already counted lost (a counter never goes back): say that they came after all.
                logger.warning(
                    "partition %d: events %d-%d of producer %s arrived after they were counted lost",
                    partition,
                    max(m_start, hole.first),
                    min(m_end, hole.first + hole.count) - 1,
                    message.producer,
                )
                continue
            holes = [h for h in holes if h is not hole]
            if hole.stored:
                removed.append(hole)
            pieces = [(hole.first, m_start - hole.first), (m_end, hole.first + hole.count - m_end)]
            holes += [_Hole(hole.producer, first, count, hole.detected_at) for first, count in pieces if count > 0]
    for hole in removed:
        conn.execute(
            delete(GAPS).where(
                GAPS.c.producer == hole.producer, GAPS.c.partition == partition, GAPS.c.first_seq == hole.first
            )
        )
    # Pieces of recorded gaps keep when they were detected (the grace runs from then); the rest are this batch's.
    kept = [h for h in holes if not h.stored and h.detected_at is not None]
    if kept:
        conn.execute(
            insert(GAPS),
            [
                {
                    "producer": h.producer,
                    "partition": partition,
                    "first_seq": h.first,
                    "count": h.count,
                    "detected_at": h.detected_at,
                }
                for h in kept
            ],
        )
    return [h for h in holes if not h.stored and h.detected_at is None]


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
