"""The stock domain's reads and writes, in the worker's transaction: set-based statements over arrays in one
psycopg pipeline on PostgreSQL, SQLAlchemy Core on SQLite (see ``likes_store``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, func, insert, select, update

from seqproc.models.db import array, columns, driver, pipeline, psycopg_driver, upsert
from seqproc.models.fields import ReservationStatus
from seqproc.models.tables.base import table_of
from seqproc.models.tables.stock import ProductStock, Reservation

if TYPE_CHECKING:
    from seqproc.domains.stock import ProductState, ReservationState, StockChanges

PRODUCTS = table_of(ProductStock)
RESERVATIONS = table_of(Reservation)
QUANTITIES = ("available", "reserved", "sold", "total_received")

LOAD_PRODUCTS = """
SELECT product_id, available, reserved, sold, total_received FROM product_stock WHERE product_id = ANY(%s::bigint[])
"""
LOAD_RESERVATIONS = """
SELECT reservation_id, product_id, quantity, status FROM reservation WHERE reservation_id = ANY(%s::text[])
"""
NEW_PRODUCTS = """
INSERT INTO product_stock (product_id, available, reserved, sold, total_received)
SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[])
"""
PRODUCT_DELTAS = """
UPDATE product_stock p SET available = p.available + u.da, reserved = p.reserved + u.dr, sold = p.sold + u.ds,
    total_received = p.total_received + u.dt, updated_at = now()
FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[], %s::bigint[]) AS u(pid, da, dr, ds, dt)
WHERE p.product_id = u.pid
"""
UPSERT_RESERVATIONS = """
INSERT INTO reservation AS r (reservation_id, product_id, quantity, status, expires_at)
SELECT rid, pid, q, st, CASE WHEN st = 'active' THEN now() + make_interval(secs => %s::float8) END
FROM unnest(%s::text[], %s::bigint[], %s::bigint[], %s::text[]) AS u(rid, pid, q, st)
ON CONFLICT (reservation_id) DO UPDATE SET status = excluded.status, updated_at = now()
"""


Found = tuple[dict[int, "ProductState"], dict[str, "ReservationState"]]


def load(conn: Connection, product_ids: Sequence[int], reservation_ids: Sequence[str]) -> Found:
    """The products that exist among ``product_ids``, and the reservations that exist among ``reservation_ids``."""
    return start_loading(conn, product_ids, reservation_ids)()


def start_loading(conn: Connection, product_ids: Sequence[int], reservation_ids: Sequence[str]) -> Callable[[], Found]:
    """Issue the reads (on PostgreSQL, inside an enclosing pipeline, only sent); the function returned reads the
    answers."""
    if psycopg_driver(conn):
        pg = driver(conn)
        product_rows = reservation_rows = None
        with pipeline(conn):
            if product_ids:
                product_rows = pg.execute(LOAD_PRODUCTS, (array(product_ids),))
            if reservation_ids:
                reservation_rows = pg.execute(LOAD_RESERVATIONS, (array(reservation_ids),))
        return lambda: _found(
            product_rows.fetchall() if product_rows is not None else [],
            reservation_rows.fetchall() if reservation_rows is not None else [],
        )
    found = _read_core(conn, product_ids, reservation_ids)
    return lambda: found


def _found(products_found: Sequence[Any], reservations_found: Sequence[Any]) -> Found:
    from seqproc.domains.stock import ProductState, ReservationState

    return (
        {row[0]: ProductState(*row[1:]) for row in products_found},
        {rid: ReservationState(pid, q, ReservationStatus(status)) for rid, pid, q, status in reservations_found},
    )


def _read_core(conn: Connection, product_ids: Sequence[int], reservation_ids: Sequence[str]) -> Found:
    products_found = []
    if product_ids:
        cols = [PRODUCTS.c.product_id, *(PRODUCTS.c[q] for q in QUANTITIES)]
        products_found = list(conn.execute(select(*cols).where(PRODUCTS.c.product_id.in_(list(product_ids)))))
    reservations_found = []
    if reservation_ids:
        reservations_found = list(
            conn.execute(
                select(
                    RESERVATIONS.c.reservation_id,
                    RESERVATIONS.c.product_id,
                    RESERVATIONS.c.quantity,
                    RESERVATIONS.c.status,
                ).where(RESERVATIONS.c.reservation_id.in_(list(reservation_ids)))
            )
        )
    return _found(products_found, reservations_found)


def write(conn: Connection, changes: StockChanges, *, reservation_ttl_s: int | None) -> None:
    """Write the changes; active reservations created now expire ``reservation_ttl_s`` later (None: never)."""
    if not changes:
        return
    if conn.dialect.name == "postgresql":
        pg = driver(conn)
        with pipeline(conn):
            if changes.new_products:
                pg.execute(NEW_PRODUCTS, columns(changes.new_products, 5))
            if changes.deltas:
                pg.execute(PRODUCT_DELTAS, columns(changes.deltas, 5))
            if changes.reservations:
                pg.execute(UPSERT_RESERVATIONS, (reservation_ttl_s, *columns(changes.reservations, 4)))
        return
    if changes.new_products:
        conn.execute(
            insert(PRODUCTS), [dict(zip(("product_id", *QUANTITIES), row, strict=True)) for row in changes.new_products]
        )
    if changes.deltas:
        conn.execute(
            update(PRODUCTS)
            .where(PRODUCTS.c.product_id == bindparam("pid"))
            .values({q: PRODUCTS.c[q] + bindparam(f"d_{q}") for q in QUANTITIES} | {"updated_at": func.now()}),
            [dict(zip(("pid", *(f"d_{q}" for q in QUANTITIES)), row, strict=True)) for row in changes.deltas],
        )
    if changes.reservations:
        expires = datetime.now(UTC) + timedelta(seconds=reservation_ttl_s) if reservation_ttl_s is not None else None
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
