"""The portable store: SQLAlchemy Core statements that SQLite (and PostgreSQL) understand. See ``worker.store``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, bindparam, delete, func, insert, select, tuple_, update

from seqproc.models.db import upsert
from seqproc.models.outcomes import Outcome, Status
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry, ParkedKey
from seqproc.models.tables.likes import ArticleLike, ArticleLikeCount, ArticleUnlike
from seqproc.models.tables.partition import Partition
from seqproc.models.tables.stock import ProductStock, Reservation, ReservationStatus
from seqproc.worker.engine.likes import Pair, PairState
from seqproc.worker.engine.stock import QUANTITIES, ProductState, ReservationState, StockState
from seqproc.worker.engine.store import CLAIMED_STATUS, DeadLetterRecord, Loaded, Writes

LEDGER = table_of(LedgerEntry)
DEAD_LETTERS = table_of(DeadLetter)
LIKES = table_of(ArticleLike)
UNLIKES = table_of(ArticleUnlike)
COUNTS = table_of(ArticleLikeCount)
PRODUCTS = table_of(ProductStock)
RESERVATIONS = table_of(Reservation)
PARTITIONS = table_of(Partition)
PARKED = table_of(ParkedKey)


def status_of(value: str | None) -> Status:
    if value in ("applied", "rejected"):
        return value  # type: ignore[return-value]
    return "applied"


class SqlStore:
    def claim_and_load(
        self,
        conn: Connection,
        keys: Sequence[tuple[str, str, int]],
        pairs: Sequence[Pair],
        product_ids: Sequence[int],
        reservation_ids: Sequence[str],
        entity_keys: Sequence[str],
    ) -> Loaded:
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
        return Loaded(
            new_keys, self._load_pairs(conn, pairs), self._load_stock(conn, product_ids, reservation_ids), parked
        )

    def load_replay(
        self, conn: Connection, entity_keys: Sequence[str]
    ) -> tuple[dict[str, list[tuple[int, str]]], set[str]]:
        found: dict[str, list[tuple[int, str]]] = {key: [] for key in entity_keys}
        rows = conn.execute(
            select(DEAD_LETTERS.c.id, DEAD_LETTERS.c.entity_key, DEAD_LETTERS.c.body)
            .where(DEAD_LETTERS.c.entity_key.in_(list(entity_keys)), DEAD_LETTERS.c.replayed_at.is_(None))
            .order_by(DEAD_LETTERS.c.id)
        )
        for dead_id, entity_key, body in rows:
            found[entity_key].append((dead_id, body))
        parked = set(
            conn.execute(select(PARKED.c.entity_key).where(PARKED.c.entity_key.in_(list(entity_keys)))).scalars()
        )
        return found, parked

    def _load_pairs(self, conn: Connection, pairs: Sequence[Pair]) -> dict[Pair, PairState | None]:
        found: dict[Pair, PairState | None] = dict.fromkeys(pairs)
        if not pairs:
            return found
        for table, liked in ((LIKES, True), (UNLIKES, False)):
            rows = conn.execute(
                select(table.c.article_id, table.c.user_id, table.c.stamp).where(
                    tuple_(table.c.article_id, table.c.user_id).in_(list(pairs))
                )
            )
            for article_id, user_id, stamp in rows:
                known = found[(article_id, user_id)]
                # The two tables are kept disjoint; if both ever held a pair, the newer stamp is the truth.
                if known is None or stamp > known.stamp:
                    found[(article_id, user_id)] = PairState(liked, stamp)
        return found

    def _load_stock(self, conn: Connection, product_ids: Sequence[int], reservation_ids: Sequence[str]) -> StockState:
        products = {}
        if product_ids:
            columns = [PRODUCTS.c.product_id, *(PRODUCTS.c[q] for q in QUANTITIES)]
            for row in conn.execute(select(*columns).where(PRODUCTS.c.product_id.in_(list(product_ids)))):
                products[row[0]] = ProductState(*row[1:])
        reservations = {}
        if reservation_ids:
            for rid, pid, quantity, status in conn.execute(
                select(
                    RESERVATIONS.c.reservation_id,
                    RESERVATIONS.c.product_id,
                    RESERVATIONS.c.quantity,
                    RESERVATIONS.c.status,
                ).where(RESERVATIONS.c.reservation_id.in_(list(reservation_ids)))
            ):
                reservations[rid] = ReservationState(pid, quantity, ReservationStatus(status))
        return StockState(products, reservations)

    def first_outcomes(self, conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
        if not keys:
            return {}
        rows = conn.execute(select(LEDGER.c.key, LEDGER.c.status, LEDGER.c.reason).where(LEDGER.c.key.in_(list(keys))))
        return {key: Outcome(status_of(status), reason) for key, status, reason in rows}

    def write(self, conn: Connection, writes: Writes) -> list[int]:
        self._write_likes(conn, writes)
        self._write_stock(conn, writes)
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
        if writes.recount:
            rows = func.count()
            for article_id in writes.recount:
                counted = conn.execute(
                    select(rows).select_from(LIKES).where(LIKES.c.article_id == article_id)
                ).scalar_one()
                stmt = upsert(conn, COUNTS).values(article_id=article_id, like_count=counted)
                conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=[COUNTS.c.article_id], set_={"like_count": counted, "updated_at": func.now()}
                    )
                )
        if writes.replayed:
            conn.execute(
                update(DEAD_LETTERS).where(DEAD_LETTERS.c.id.in_(writes.replayed)).values(replayed_at=func.now())
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
        return fenced

    def _write_likes(self, conn: Connection, writes: Writes) -> None:
        changes = writes.likes
        for liked, rows in changes.restamped.items():
            if rows:
                table = LIKES if liked else UNLIKES
                conn.execute(
                    update(table)
                    .where(table.c.article_id == bindparam("a"), table.c.user_id == bindparam("u"))
                    .values(stamp=bindparam("s")),
                    [{"a": a, "u": u, "s": s} for a, u, s in rows],
                )
        if changes.flipped:
            for table in (LIKES, UNLIKES):
                conn.execute(delete(table).where(tuple_(table.c.article_id, table.c.user_id).in_(changes.flipped)))
        for liked, rows in changes.inserts.items():
            if rows:
                conn.execute(
                    insert(LIKES if liked else UNLIKES),
                    [{"article_id": a, "user_id": u, "stamp": s} for a, u, s in rows],
                )
        if changes.gained:
            stmt = upsert(conn, COUNTS)
            # like_count in the VALUES is the gain; a new row starts from it.
            stmt = stmt.on_conflict_do_update(
                index_elements=[COUNTS.c.article_id],
                set_={"like_count": COUNTS.c.like_count + stmt.excluded.like_count, "updated_at": func.now()},
            )
            conn.execute(stmt, [{"article_id": a, "like_count": d} for a, d in changes.gained.items()])
        if changes.lost:
            # An article that loses likes had them, so its row exists. (An upsert with a negative value would fail:
            # PostgreSQL checks the CHECK constraint on the row it would have inserted.)
            conn.execute(
                update(COUNTS)
                .where(COUNTS.c.article_id == bindparam("a"))
                .values(like_count=COUNTS.c.like_count - bindparam("d"), updated_at=func.now()),
                [{"a": a, "d": d} for a, d in changes.lost.items()],
            )

    def _write_stock(self, conn: Connection, writes: Writes) -> None:
        changes = writes.stock
        if changes.new_products:
            conn.execute(
                insert(PRODUCTS),
                [dict(zip(("product_id", *QUANTITIES), row, strict=True)) for row in changes.new_products],
            )
        if changes.deltas:
            conn.execute(
                update(PRODUCTS)
                .where(PRODUCTS.c.product_id == bindparam("pid"))
                .values({q: PRODUCTS.c[q] + bindparam(f"d_{q}") for q in QUANTITIES} | {"updated_at": func.now()}),
                [dict(zip(("pid", *(f"d_{q}" for q in QUANTITIES)), row, strict=True)) for row in changes.deltas],
            )
        if changes.reservations:
            ttl = writes.reservation_ttl_s
            expires = datetime.now(UTC) + timedelta(seconds=ttl) if ttl is not None else None
            stmt = upsert(conn, RESERVATIONS)
            stmt = stmt.on_conflict_do_update(
                index_elements=[RESERVATIONS.c.reservation_id],
                set_={"status": stmt.excluded.status, "updated_at": func.now()},
            )
            conn.execute(
                stmt,
                [
                    {
                        "reservation_id": rid,
                        "product_id": pid,
                        "quantity": q,
                        "status": status,
                        "expires_at": expires if status == ReservationStatus.ACTIVE.value else None,
                    }
                    for rid, pid, q, status in changes.reservations
                ],
            )

    def store_dead_letters(self, conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
        if records:
            conn.execute(insert(DEAD_LETTERS), [dead_letter_row(d) for d in records])


def dead_letter_row(d: DeadLetterRecord) -> dict[str, object]:
    return {
        "partition": d.partition,
        "queue": d.queue,
        "event_key": d.event_key,
        "entity_key": d.entity_key,
        "content_type": d.content_type,
        "body": d.body,
        "error": d.error,
    }


__all__ = ["SqlStore"]
