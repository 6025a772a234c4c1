"""Stock: reserve only what is available, release once, a release that comes first cancels, commit, restock.

As with likes, the rule (:func:`decide`) is pure and runs over the events of a batch in order against the running
quantities in memory; :func:`apply_stock` then writes each touched product once (as deltas, so that the database's
CHECK constraints still guard the invariants) and each touched reservation once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sqlalchemy import Connection, bindparam, func, insert, select, update

from models.base import table_of
from models.events import Commit, Release, Reserve, Restock
from models.outcomes import Outcome
from models.stock import ProductStock, Reservation, ReservationStatus
from worker.sql import upsert

PRODUCTS = table_of(ProductStock)
RESERVATIONS = table_of(Reservation)

StockEvent = Reserve | Release | Commit | Restock

APPLIED = Outcome("applied")


def rejected(reason: str) -> Outcome:
    return Outcome("rejected", reason)


@dataclass(frozen=True, slots=True)
class ProductState:
    available: int = 0
    reserved: int = 0
    sold: int = 0
    total_received: int = 0


@dataclass(frozen=True, slots=True)
class ReservationState:
    product_id: int
    quantity: int
    status: ReservationStatus


@dataclass
class StockState:
    """The products and reservations a batch touches. A product absent from ``products`` does not exist."""

    products: dict[int, ProductState]
    reservations: dict[str, ReservationState]


_REJECT_BY_STATUS = {
    ReservationStatus.RELEASED: "already_released",
    ReservationStatus.COMMITTED: "already_committed",
    ReservationStatus.CANCELLED: "cancelled",
    ReservationStatus.REJECTED: "reservation_rejected",
}


def decide(state: StockState, event: StockEvent) -> Outcome:
    """Apply ``event`` to ``state`` in place and return its outcome."""
    if event.type == "restock":
        product = state.products.get(event.product_id, ProductState())
        state.products[event.product_id] = replace(
            product,
            available=product.available + event.quantity,
            total_received=product.total_received + event.quantity,
        )
        return APPLIED
    current = state.reservations.get(event.reservation_id)
    if event.type == "reserve":
        return _reserve(state, event, current)
    if current is None:
        if event.type == "commit":
            return rejected("unknown_reservation")
        # The release overtook its reservation: remember it, so that the reservation is refused when it comes.
        state.reservations[event.reservation_id] = ReservationState(event.product_id, 0, ReservationStatus.CANCELLED)
        return Outcome("applied", "cancelled_before_reserve")
    if current.product_id != event.product_id:
        return rejected("product_mismatch")
    if current.status != ReservationStatus.ACTIVE:
        return rejected(_REJECT_BY_STATUS[current.status])
    product = state.products[current.product_id]
    if event.type == "release":
        new_status = ReservationStatus.RELEASED
        product = replace(
            product,
            available=product.available + current.quantity,
            reserved=product.reserved - current.quantity,
        )
    else:
        new_status = ReservationStatus.COMMITTED
        product = replace(product, reserved=product.reserved - current.quantity, sold=product.sold + current.quantity)
    state.products[current.product_id] = product
    state.reservations[event.reservation_id] = replace(current, status=new_status)
    return APPLIED


def _reserve(state: StockState, event: Reserve, current: ReservationState | None) -> Outcome:
    if current is not None:
        if current.status == ReservationStatus.CANCELLED:
            return rejected("cancelled")
        # The ledger catches a resent reserve; this is a reservation id used again for another reserve.
        return rejected("duplicate_reservation")
    product = state.products.get(event.product_id)
    if product is None or product.available < event.quantity:
        state.reservations[event.reservation_id] = ReservationState(
            event.product_id, event.quantity, ReservationStatus.REJECTED
        )
        return rejected("unknown_product" if product is None else "insufficient_stock")
    state.products[event.product_id] = replace(
        product, available=product.available - event.quantity, reserved=product.reserved + event.quantity
    )
    state.reservations[event.reservation_id] = ReservationState(
        event.product_id, event.quantity, ReservationStatus.ACTIVE
    )
    return APPLIED


def apply_stock(conn: Connection, events: Sequence[StockEvent]) -> list[Outcome]:
    """Apply ``events`` (new ones: the ledger has already filtered duplicates) in order; return their outcomes."""
    if not events:
        return []
    initial = _load(conn, events)
    state = StockState(dict(initial.products), dict(initial.reservations))
    outcomes = [decide(state, event) for event in events]
    _store(conn, initial, state)
    return outcomes


def _load(conn: Connection, events: Sequence[StockEvent]) -> StockState:
    product_ids = sorted({event.product_id for event in events})
    reservation_ids = sorted({event.reservation_id for event in events if event.type != "restock"})
    products = {
        row.product_id: ProductState(row.available, row.reserved, row.sold, row.total_received)
        for row in conn.execute(
            select(
                PRODUCTS.c.product_id,
                PRODUCTS.c.available,
                PRODUCTS.c.reserved,
                PRODUCTS.c.sold,
                PRODUCTS.c.total_received,
            ).where(PRODUCTS.c.product_id.in_(product_ids))
        )
    }
    reservations: dict[str, ReservationState] = {}
    if reservation_ids:
        for row in conn.execute(
            select(
                RESERVATIONS.c.reservation_id,
                RESERVATIONS.c.product_id,
                RESERVATIONS.c.quantity,
                RESERVATIONS.c.status,
            ).where(RESERVATIONS.c.reservation_id.in_(reservation_ids))
        ):
            reservations[row.reservation_id] = ReservationState(
                row.product_id, row.quantity, ReservationStatus(row.status)
            )
    return StockState(products, reservations)


def _store(conn: Connection, initial: StockState, final: StockState) -> None:
    columns = ("available", "reserved", "sold", "total_received")
    new_rows = []
    deltas = []
    for product_id, after in final.products.items():
        before = initial.products.get(product_id)
        if before is None:
            new_rows.append({"product_id": product_id} | {c: getattr(after, c) for c in columns})
        elif after != before:
            deltas.append({"pid": product_id} | {f"d_{c}": getattr(after, c) - getattr(before, c) for c in columns})
    if new_rows:
        conn.execute(insert(PRODUCTS), new_rows)
    if deltas:
        # Deltas, not absolute values, so that the CHECK constraints judge the arithmetic against the row as it
        # is. (Not an upsert: PostgreSQL checks the would-be inserted row, whose negative delta fails the CHECK.)
        conn.execute(
            update(PRODUCTS)
            .where(PRODUCTS.c.product_id == bindparam("pid"))
            .values({c: PRODUCTS.c[c] + bindparam(f"d_{c}") for c in columns} | {"updated_at": func.now()}),
            deltas,
        )
    changed = [
        {"reservation_id": rid, "product_id": r.product_id, "quantity": r.quantity, "status": r.status.value}
        for rid, r in final.reservations.items()
        if initial.reservations.get(rid) != r
    ]
    if changed:
        stmt = upsert(conn, RESERVATIONS)
        stmt = stmt.on_conflict_do_update(
            index_elements=[RESERVATIONS.c.reservation_id],
            set_={"status": stmt.excluded.status, "updated_at": func.now()},
        )
        conn.execute(stmt, changed)
