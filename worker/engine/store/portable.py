"""The portable store: SQLAlchemy Core statements that SQLite (and PostgreSQL) understand. See ``worker.engine.store``
(the base both stores import; neither imports the other)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update

from seqproc.models.db import upsert
from seqproc.models.outcomes import Outcome
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry, ParkedKey
from seqproc.models.tables.partition import Partition
from seqproc.models.tables.sequence import ProducerSequence, SequenceGap
from seqproc.worker.engine.store import CLAIMED_STATUS, DeadLetterRecord, Loaded, Writes, dead_letter_row, status_of

LEDGER = table_of(LedgerEntry)
DEAD_LETTERS = table_of(DeadLetter)
PARTITIONS = table_of(Partition)
PARKED = table_of(ParkedKey)
SEQUENCES = table_of(ProducerSequence)
GAPS = table_of(SequenceGap)


class SqlStore:
    def claim(
        self, conn: Connection, keys: Sequence[tuple[str, str, int]], entity_keys: Sequence[str]
    ) -> Callable[[], Loaded]:
        new_keys: set[str] = set()
        if keys:
            stmt = upsert(conn, LEDGER).on_conflict_do_nothing(index_elements=[LEDGER.c.key]).returning(LEDGER.c.key)
            rows = conn.execute(
                stmt,
                [{"key": k, "partition": p, "event_type": t, "status": CLAIMED_STATUS} for k, t, p in keys],
            )
            new_keys = {row[0] for row in rows}
        parked: set[str] = set()
        if entity_keys:
            parked = set(
                conn.execute(select(PARKED.c.entity_key).where(PARKED.c.entity_key.in_(list(entity_keys)))).scalars()
            )
        loaded = Loaded(new_keys, parked)
        return lambda: loaded

    def load_sequences(
        self, conn: Connection, streams: Sequence[tuple[str, int]]
    ) -> Callable[[], dict[tuple[str, int], int]]:
        rows = conn.execute(
            select(SEQUENCES.c.producer, SEQUENCES.c.partition, SEQUENCES.c.next_seq).where(
                tuple_(SEQUENCES.c.producer, SEQUENCES.c.partition).in_(list(streams))
            )
        )
        found = {(producer, int(partition)): int(n) for producer, partition, n in rows}
        return lambda: found

    def load_replay(
        self, conn: Connection, entity_keys: Sequence[str]
    ) -> tuple[dict[str, list[tuple[int, str]]], set[str]]:
        found: dict[str, list[tuple[int, str]]] = {key: [] for key in entity_keys}
        rows = conn.execute(
            select(DEAD_LETTERS.c.id, DEAD_LETTERS.c.entity_key, DEAD_LETTERS.c.body)
            .where(DEAD_LETTERS.c.entity_key.in_(list(entity_keys)), DeadLetter.is_open())
            .order_by(DEAD_LETTERS.c.id)
        )
        for dead_id, entity_key, body in rows:
            found[entity_key].append((dead_id, body))
        parked = set(
            conn.execute(select(PARKED.c.entity_key).where(PARKED.c.entity_key.in_(list(entity_keys)))).scalars()
        )
        return found, parked

    def first_outcomes(self, conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
        if not keys:
            return {}
        rows = conn.execute(select(LEDGER.c.key, LEDGER.c.status, LEDGER.c.reason).where(LEDGER.c.key.in_(list(keys))))
        return {key: Outcome(status_of(status), reason) for key, status, reason in rows}

    def write(self, conn: Connection, writes: Writes) -> Callable[[], list[int]]:
        if writes.outcomes:
            conn.execute(
                update(LEDGER)
                .where(LEDGER.c.key == bindparam("k"))
                .values(status=bindparam("s"), reason=bindparam("r")),
                [{"k": key, "s": o.status, "r": o.reason} for key, o in writes.outcomes],
            )
        self.store_dead_letters(conn, writes.dead_letters)
        if writes.unclaim:
            conn.execute(delete(LEDGER).where(LEDGER.c.key.in_(writes.unclaim)))
        for entity_key, partition, reason in writes.park:
            conn.execute(
                upsert(conn, PARKED).on_conflict_do_nothing(index_elements=[PARKED.c.entity_key]),
                {"entity_key": entity_key, "partition": partition, "reason": reason},
            )
        if writes.unpark:
            conn.execute(delete(PARKED).where(PARKED.c.entity_key.in_(writes.unpark)))
        if writes.replayed:
            conn.execute(
                update(DEAD_LETTERS).where(DEAD_LETTERS.c.id.in_(writes.replayed)).values(replayed_at=func.now())
            )
        if writes.sequences:
            stmt = upsert(conn, SEQUENCES)
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[SEQUENCES.c.producer, SEQUENCES.c.partition],
                    set_={"next_seq": stmt.excluded.next_seq, "seen_at": func.now()},
                ),
                [{"producer": p, "partition": n, "next_seq": s} for p, n, s in writes.sequences],
            )
        if writes.gaps:
            conn.execute(
                insert(GAPS),
                [{"producer": p, "partition": n, "first_seq": f, "count": c} for p, n, f, c in writes.gaps],
            )
        fenced = []
        for f in writes.fences:
            if f.epoch is None:
                continue
            updated = conn.execute(
                update(PARTITIONS)
                .where(PARTITIONS.c.partition == f.partition, PARTITIONS.c.epoch == f.epoch)
                .values(
                    applied=PARTITIONS.c.applied + f.applied,
                    duplicates=PARTITIONS.c.duplicates + f.duplicates,
                    rejected=PARTITIONS.c.rejected + f.rejected,
                )
            )
            if updated.rowcount != 1:
                fenced.append(f.partition)
        return lambda: fenced

    def store_dead_letters(self, conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
        if records:
            conn.execute(insert(DEAD_LETTERS), [dead_letter_row(d) for d in records])


__all__ = ["SqlStore"]
