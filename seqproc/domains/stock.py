"""Stock, keyed by product: reserve only what is available, release once, a release that comes first cancels,
commit, restock.

A built-in domain on the public API (``seqproc.Domain``). The rule (:func:`decide`) runs per event against the
running quantities in memory; ``save`` writes each touched product once, as deltas (so that the database's CHECK
constraints still guard the invariants), and each touched reservation once (:func:`diff`). Tables:
``product_stock`` (invariants ``available >= 0`` and ``available + reserved + sold == total_received``, as
constraints) and ``reservation``, keyed by the caller's reservation id.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, cast

from pydantic import model_validator

from seqproc.models.domain import Applied, Domain, EventModel, Rejected, batch_context
from seqproc.models.events import reservation_key
from seqproc.models.fields import CallerKey, Id, Quantity, ReservationStatus
from seqproc.models.outcomes import Outcome

domain = Domain("stock", key="product_id", entity="product", type_prefix="")

#: Events whose idempotency key is derived from the reservation id and the action: one of each per reservation.
RESERVATION_TYPES = ("reserve", "release", "commit")


class _ReservationEvent(EventModel):
    """Each subclass declares ``reservation_id`` itself, after its own fields: the fields' order is the order of
    the calls' and the CLI's arguments (``reserve PRODUCT QUANTITY RESERVATION``)."""

    product_id: Id

    @property
    def reservation(self) -> str:
        return str(getattr(self, "reservation_id"))  # noqa: B009  # declared by each subclass

    def derived_key(self) -> str | None:
        # One reserve, one release and one commit per reservation, whoever sends them how many times.
        return reservation_key(self.type, self.reservation)

    @property
    def ledger_key(self) -> str:
        # Already scoped: "reserve:<reservation id>".
        return str(self.key)

    @model_validator(mode="after")
    def _key_is_derived(self) -> _ReservationEvent:
        if self.key is not None:
            expected = reservation_key(self.type, self.reservation)
            if self.key != expected:
                raise ValueError(f"key must be {expected!r} for this event (it is derived from the reservation id)")
        return self


@domain.event("reserve")
class Reserve(_ReservationEvent):
    """Hold ``quantity`` units of ``product_id`` under ``reservation_id``, if that many are available."""

    quantity: Quantity
    reservation_id: CallerKey


@domain.event("release")
class Release(_ReservationEvent):
    """Give a reservation's units back (once); arriving before its reservation, cancel it."""

    reservation_id: CallerKey


@domain.event("commit")
class Commit(_ReservationEvent):
    """Turn an applied reservation into a sale."""

    reservation_id: CallerKey


@domain.event("restock")
class Restock(EventModel):
    """Add ``quantity`` units of ``product_id`` (creating the product on its first restock)."""

    product_id: Id
    quantity: Quantity


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
    if isinstance(event, Restock):
        product = state.products.get(event.product_id, ProductState())
        state.products[event.product_id] = replace(
            product,
            available=product.available + event.quantity,
            total_received=product.total_received + event.quantity,
        )
        return APPLIED
    current = state.reservations.get(event.reservation_id)
    if isinstance(event, Reserve):
        return _reserve(state, event, current)
    if current is None:
        if isinstance(event, Commit):
            return rejected("unknown_reservation")
        # The release overtook its reservation: remember it, so that the reservation is refused when it comes.
        state.reservations[event.reservation_id] = ReservationState(event.product_id, 0, ReservationStatus.CANCELLED)
        return Outcome("applied", "cancelled_before_reserve")
    if current.product_id != event.product_id:
        return rejected("product_mismatch")
    if current.status != ReservationStatus.ACTIVE:
        return rejected(_REJECT_BY_STATUS[current.status])
    product = state.products[current.product_id]
    if isinstance(event, Release):
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


@dataclass
class ProductBook:
    """One product as a batch sees it: the product (absent: it does not exist yet) and the reservations its events
    name, as loaded (``initial``) and as now (``state``)."""

    initial: StockState
    state: StockState


@domain.load
def load(conn: Any, keys: Sequence[int], events: Sequence[EventModel]) -> dict[int, ProductBook]:
    return prefetch(conn, keys, events)()


def prefetch(conn: Any, keys: Sequence[int], events: Sequence[EventModel]) -> Callable[[], dict[int, ProductBook]]:
    """The load in two steps (the worker sends its statements with the ledger's claim: see ``Domain.prefetch``)."""
    reservation_ids = sorted({e.reservation for e in events if isinstance(e, _ReservationEvent)})
    from seqproc.domains import stock_store  # the SQL and its tables: loaded by workers, not producers

    reading = stock_store.start_loading(conn, list(keys), reservation_ids)
    return lambda: _books(keys, events, *reading())


def _books(
    keys: Sequence[int],
    events: Sequence[EventModel],
    products: dict[int, ProductState],
    reservations: dict[str, ReservationState],
) -> dict[int, ProductBook]:
    named: dict[int, set[str]] = {key: set() for key in keys}
    for event in events:
        if isinstance(event, _ReservationEvent):
            named[event.product_id].add(event.reservation)
    books = {}
    for key in keys:
        initial = StockState(
            {key: products[key]} if key in products else {},
            {rid: reservations[rid] for rid in named[key] if rid in reservations},
        )
        books[key] = ProductBook(initial, StockState(dict(initial.products), dict(initial.reservations)))
    return books


domain.prefetch = prefetch

#: A reservation event that names another product than its reservation's.
_PRODUCT_MISMATCH = Rejected("product_mismatch")


def conflict(book: ProductBook | None, event: EventModel, first: EventModel | None) -> Rejected | None:
    """A reservation event whose key (``reserve:<id>``, ``release:<id>``, ...) was applied before is a copy of that
    event only if it names the same product: a reservation id used again on another product is rejected with
    ``product_mismatch``, as a release or a commit naming another product than its reservation's is.

    The product is the reservation's as loaded (its reserve made it), or the first event's of the key in this batch.
    A reservation a release cancelled before any reserve holds the release's product: it tells only for a release."""
    if not isinstance(event, _ReservationEvent):
        return None
    known = book.state.reservations.get(event.reservation) if book is not None else None
    if known is not None and (known.status != ReservationStatus.CANCELLED or isinstance(event, Release)):
        product = known.product_id
    elif isinstance(first, _ReservationEvent):
        product = first.product_id
    else:
        return None
    return _PRODUCT_MISMATCH if product != event.product_id else None


domain.conflict = conflict


#: What most applied events return (one object, not one per event).
_APPLIED = Applied()


@domain.apply
def apply(book: ProductBook, event: EventModel) -> Applied | Rejected:
    # Only this domain's events reach its apply (the engine groups events by their class's domain).
    reservation = getattr(event, "reservation_id", None)
    before = book.state.reservations.get(reservation) if reservation is not None else None
    outcome = decide(book.state, cast(StockEvent, event))
    if outcome.status == "applied":
        return _APPLIED if outcome.reason is None else Applied(outcome.reason)
    # A refused reservation is remembered (a later release must find it refused): that refusal is a change.
    changed = reservation is not None and book.state.reservations.get(reservation) != before
    return Rejected(outcome.reason or "rejected", changed=changed)


@domain.save
def save(conn: Any, changed: dict[int, ProductBook]) -> None:
    initial = StockState({}, {})
    final = StockState({}, {})
    for book in changed.values():
        initial.products.update(book.initial.products)
        initial.reservations.update(book.initial.reservations)
        final.products.update(book.state.products)
        final.reservations.update(book.state.reservations)
    from seqproc.domains import stock_store

    stock_store.write(conn, diff(initial, final), reservation_ttl_s=batch_context().reservation_ttl_s)


__all__ = [
    "RESERVATION_TYPES",
    "Commit",
    "ProductBook",
    "ProductState",
    "Release",
    "ReservationState",
    "Reserve",
    "Restock",
    "StockChanges",
    "StockState",
    "conflict",
    "decide",
    "diff",
    "domain",
    "evaluate",
]
