"""Stock: reserve only what is available, release once, a release that comes first cancels, commit, restock.

Pure functions, as for likes: :func:`decide` is the rule for one event, evaluated against the running quantities of
the batch in memory by :func:`evaluate`; :func:`diff` says what to write: each touched product once, as deltas (so
that the database's CHECK constraints still guard the invariants), and each touched reservation once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from seqproc.models.events import Commit, Release, Reserve, Restock
from seqproc.models.outcomes import Outcome
from seqproc.models.tables.stock import ReservationStatus

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


def evaluate(initial: StockState, events: Sequence[StockEvent]) -> tuple[StockState, list[Outcome]]:
    """Run the rule over ``events`` in order from ``initial`` (left untouched): the final state, and the outcomes."""
    state = StockState(dict(initial.products), dict(initial.reservations))
    return state, [decide(state, event) for event in events]


QUANTITIES = ("available", "reserved", "sold", "total_received")


@dataclass
class StockChanges:
    #: Products seen for the first time (their first restock): (product_id, available, reserved, sold, total).
    new_products: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    #: Existing products: (product_id, d_available, d_reserved, d_sold, d_total). Written as deltas, so that the
    #: CHECK constraints judge the arithmetic against the row as it is.
    deltas: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    #: Reservations created or whose status changed: (reservation_id, product_id, quantity, status).
    reservations: list[tuple[str, int, int, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new_products or self.deltas or self.reservations)


def diff(initial: StockState, final: StockState) -> StockChanges:
    changes = StockChanges()
    for product_id, after in final.products.items():
        before = initial.products.get(product_id)
        values = tuple(getattr(after, q) for q in QUANTITIES)
        if before is None:
            changes.new_products.append((product_id, *values))
        elif after != before:
            changes.deltas.append((product_id, *(getattr(after, q) - getattr(before, q) for q in QUANTITIES)))
    for rid, r in final.reservations.items():
        if initial.reservations.get(rid) != r:
            changes.reservations.append((rid, r.product_id, r.quantity, r.status.value))
    return changes
