"""The PostgreSQL store: set-based statements over arrays, in psycopg pipelines. See ``worker.engine.store``.

Every statement has constant text whatever the batch size (arrays, not expanding IN lists or executemany), so
psycopg prepares it after a few uses and nothing is re-parsed or recompiled per batch. The framework's part of a
batch costs two round trips, (claim the keys + see what is parked + where the producers' sequences stand) and
(write the outcomes + move the sequences + check the fence), plus the commit; each domain loads and saves its own
rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import Connection

from seqproc.models.db import array, columns, driver, pipeline
from seqproc.models.outcomes import Outcome
from seqproc.worker.engine.store import CLAIMED_STATUS, DeadLetterRecord, Loaded, Writes, dead_letter_row, status_of

CLAIM = """
INSERT INTO idempotency_ledger (key, partition, event_type, status)
SELECT k, p, t, %s FROM unnest(%s::text[], %s::int[], %s::text[]) AS u(k, p, t)
ON CONFLICT (key) DO NOTHING
RETURNING key
"""
FIRST_OUTCOMES = "SELECT key, status, reason FROM idempotency_ledger WHERE key = ANY(%s::text[])"
LOAD_PARKED = "SELECT entity_key FROM parked_key WHERE entity_key = ANY(%s::text[])"
LOAD_DEAD_LETTERS = """
SELECT id, entity_key, body FROM dead_letter
WHERE entity_key = ANY(%s::text[]) AND replayed_at IS NULL AND retried_at IS NULL AND discarded_at IS NULL
ORDER BY id
"""
UNCLAIM = "DELETE FROM idempotency_ledger WHERE key = ANY(%s::text[])"
PARK = """
INSERT INTO parked_key (entity_key, partition, reason) VALUES (%s, %s, %s) ON CONFLICT (entity_key) DO NOTHING
"""
UNPARK = "DELETE FROM parked_key WHERE entity_key = ANY(%s::text[])"
MARK_REPLAYED = "UPDATE dead_letter SET replayed_at = now() WHERE id = ANY(%s::bigint[])"

SET_OUTCOMES = """
UPDATE idempotency_ledger l SET status = u.s, reason = u.r FROM unnest(%s::text[], %s::text[], %s::text[]) AS u(k, s, r)
WHERE l.key = u.k
"""
INSERT_DEAD_LETTER = """
INSERT INTO dead_letter (partition, queue, event_key, entity_key, content_type, body, error)
VALUES (%(partition)s, %(queue)s, %(event_key)s, %(entity_key)s, %(content_type)s, %(body)s, %(error)s)
"""
LOAD_SEQUENCES = """
SELECT s.producer, s.partition, s.next_seq
FROM seqproc_producer_sequence s JOIN unnest(%s::text[], %s::int[]) AS u(producer, partition)
ON s.producer = u.producer AND s.partition = u.partition
"""
MOVE_SEQUENCES = """
INSERT INTO seqproc_producer_sequence (producer, partition, next_seq)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[])
ON CONFLICT (producer, partition) DO UPDATE SET next_seq = EXCLUDED.next_seq, seen_at = now()
"""
OPEN_GAPS = """
INSERT INTO seqproc_sequence_gap (producer, partition, first_seq, count)
SELECT * FROM unnest(%s::text[], %s::int[], %s::bigint[], %s::bigint[])
"""
FENCE = """
UPDATE partition SET applied = applied + %s, duplicates = duplicates + %s, rejected = rejected + %s
WHERE partition = %s AND epoch = %s
"""


class PostgresStore:
    def claim(
        self, conn: Connection, keys: Sequence[tuple[str, str, int]], entity_keys: Sequence[str]
    ) -> Callable[[], Loaded]:
        pg = driver(conn)
        claimed = parked = None
        with pipeline(conn):
            if keys:
                ks, ts, ps = columns(keys, 3)
                claimed = pg.execute(CLAIM, (CLAIMED_STATUS, ks, ps, ts))
            if entity_keys:
                parked = pg.execute(LOAD_PARKED, (array(entity_keys),))

        def loaded() -> Loaded:
            # Read only now: in an enclosing pipeline, the statements issued meanwhile (the domains' loads) went
            # out with these, in the same round trip.
            return Loaded(
                {row[0] for row in claimed.fetchall()} if claimed is not None else set(),
                {row[0] for row in parked.fetchall()} if parked is not None else set(),
            )

        return loaded

    def load_sequences(
        self, conn: Connection, streams: Sequence[tuple[str, int]]
    ) -> Callable[[], dict[tuple[str, int], int]]:
        found = driver(conn).execute(LOAD_SEQUENCES, columns(streams, 2))
        return lambda: {(producer, partition): int(n) for producer, partition, n in found.fetchall()}

    def load_replay(
        self, conn: Connection, entity_keys: Sequence[str]
    ) -> tuple[dict[str, list[tuple[int, str]]], set[str]]:
        pg = driver(conn)
        found: dict[str, list[tuple[int, str]]] = {key: [] for key in entity_keys}
        with pipeline(conn):
            letters = pg.execute(LOAD_DEAD_LETTERS, (array(entity_keys),))
            parked = pg.execute(LOAD_PARKED, (array(entity_keys),))
        for dead_id, entity_key, body in letters.fetchall():
            found[entity_key].append((dead_id, body))
        return found, {row[0] for row in parked.fetchall()}

    def first_outcomes(self, conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
        if not keys:
            return {}
        rows = driver(conn).execute(FIRST_OUTCOMES, (array(keys),)).fetchall()
        return {key: Outcome(status_of(status), reason) for key, status, reason in rows}

    def write(self, conn: Connection, writes: Writes) -> Callable[[], list[int]]:
        pg = driver(conn)
        fences = []
        with pipeline(conn):
            if writes.outcomes:
                pg.execute(
                    SET_OUTCOMES,
                    (
                        array(k for k, _ in writes.outcomes),
                        array(o.status for _, o in writes.outcomes),
                        array(o.reason for _, o in writes.outcomes),
                    ),
                )
            for record in writes.dead_letters:
                pg.execute(INSERT_DEAD_LETTER, dead_letter_row(record))
            if writes.unclaim:
                pg.execute(UNCLAIM, (array(writes.unclaim),))
            for entity_key, partition, reason in writes.park:
                pg.execute(PARK, (entity_key, partition, reason))
            if writes.unpark:
                pg.execute(UNPARK, (array(writes.unpark),))
            if writes.replayed:
                pg.execute(MARK_REPLAYED, (array(writes.replayed),))
            if writes.sequences:
                pg.execute(MOVE_SEQUENCES, columns(writes.sequences, 3))
            if writes.gaps:
                pg.execute(OPEN_GAPS, columns(writes.gaps, 4))
            # Last: each partition row's lock orders this transaction against a takeover of that partition.
            for f in writes.fences:
                if f.epoch is not None:
                    cursor = pg.execute(FENCE, (f.applied, f.duplicates, f.rejected, f.partition, f.epoch))
                    fences.append((f.partition, cursor))
        # Read when called: in an enclosing pipeline, after the round trip that carries everything.
        return lambda: [partition for partition, cursor in fences if cursor.rowcount != 1]

    def store_dead_letters(self, conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
        pg = driver(conn)
        with pipeline(conn):
            for record in records:
                pg.execute(INSERT_DEAD_LETTER, dead_letter_row(record))
