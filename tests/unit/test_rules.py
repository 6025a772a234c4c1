"""The pure domain rules (``worker.likes.decide``, ``worker.stock.decide``) under any order of events."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from seqproc.domains import likes, stock
from seqproc.domains.likes import Like, Unlike
from seqproc.domains.stock import Commit, ProductState, Release, ReservationState, Reserve, Restock, StockState
from seqproc.models.events import parse_event, reservation_key
from seqproc.models.tables.stock import ReservationStatus

_ids = itertools.count(1)


def make(event_type: str, *, stamp: int | None = None, key: str | None = None, **fields: Any) -> Any:
    """A wire-valid event, filled in as ``producer.build.build_event`` does."""
    n = next(_ids)
    if event_type in ("reserve", "release", "commit"):
        key = reservation_key(event_type, fields["reservation_id"])
    data = {"type": event_type, "key": key or f"k{n}", "id": f"id{n}", "stamp": stamp or n, **fields}
    return parse_event(data)


# ----------------------------------------------------------------------------------------------------- likes

like_actions = st.lists(
    st.tuples(st.sampled_from(["like", "unlike"]), st.integers(1, 2), st.integers(1, 3)), min_size=1, max_size=25
)


@st.composite
def like_streams(draw: st.DrawFn) -> tuple[list[Like | Unlike], list[Like | Unlike]]:
    """Events with distinct stamps, and the same events in an arbitrary delivery order."""
    actions = draw(like_actions)
    stamps = draw(st.lists(st.integers(1, 10**12), min_size=len(actions), max_size=len(actions), unique=True))
    events = [
        make(kind, stamp=stamp, article_id=article, user_id=user)
        for (kind, article, user), stamp in zip(actions, stamps, strict=True)
    ]
    return events, draw(st.permutations(events))


def run_likes(events: list[Like | Unlike]) -> dict[tuple[int, int], likes.PairState | None]:
    state: dict[tuple[int, int], likes.PairState | None] = {}
    for event in events:
        pair = (event.article_id, event.user_id)
        state[pair], _outcome = likes.decide(state.get(pair), event)
    return state


@settings(max_examples=200, deadline=None)
@given(like_streams())
def test_last_like_action_by_stamp_wins_in_any_order(stream: tuple[list[Any], list[Any]]) -> None:
    events, delivered = stream
    in_order = run_likes(sorted(events, key=lambda e: e.stamp))
    assert run_likes(delivered) == in_order
    for pair, state in in_order.items():
        last = max((e for e in events if (e.article_id, e.user_id) == pair), key=lambda e: e.stamp)
        assert state == likes.PairState(last.type == "like", last.stamp)


def test_like_outcomes() -> None:
    like1 = make("like", stamp=10, article_id=1, user_id=1)
    state, outcome = likes.decide(None, like1)
    assert (state, outcome) == (likes.PairState(True, 10), likes.APPLIED)
    state, outcome = likes.decide(state, make("like", stamp=11, article_id=1, user_id=1))
    assert (state, outcome.status, outcome.reason) == (likes.PairState(True, 11), "applied", "already_liked")
    # An older unlike delivered late changes nothing.
    same, outcome = likes.decide(state, make("unlike", stamp=5, article_id=1, user_id=1))
    assert (same, outcome.status, outcome.reason) == (state, "rejected", "stale")
    # An event with the very same stamp is not newer either.
    same, outcome = likes.decide(state, make("unlike", stamp=11, article_id=1, user_id=1))
    assert (same, outcome.reason) == (state, "stale")
    state, outcome = likes.decide(state, make("unlike", stamp=12, article_id=1, user_id=1))
    assert (state, outcome) == (likes.PairState(False, 12), likes.APPLIED)
    state, outcome = likes.decide(None, make("unlike", stamp=3, article_id=1, user_id=2))
    assert (state, outcome.reason) == (likes.PairState(False, 3), "not_liked")


# ----------------------------------------------------------------------------------------------------- stock

PRODUCTS = (1, 2)
RESERVATIONS = ("r1", "r2", "r3", "r4")


def product_of(reservation_id: str) -> int:
    return PRODUCTS[RESERVATIONS.index(reservation_id) % len(PRODUCTS)]


stock_specs = st.one_of(
    st.tuples(st.just("restock"), st.sampled_from(PRODUCTS), st.integers(1, 6)),
    st.tuples(st.just("reserve"), st.sampled_from(RESERVATIONS), st.integers(1, 6)),
    st.tuples(st.sampled_from(["release", "commit"]), st.sampled_from(RESERVATIONS), st.none()),
)


def stock_event(spec: tuple[str, Any, int | None]) -> Any:
    kind, target, quantity = spec
    if kind == "restock":
        return make("restock", product_id=target, quantity=quantity)
    fields: dict[str, Any] = {"product_id": product_of(target), "reservation_id": target}
    if kind == "reserve":
        fields["quantity"] = quantity
    return make(kind, **fields)


def check_stock_invariants(state: StockState) -> None:
    for product_id, product in state.products.items():
        active = [r for r in state.reservations.values() if r.product_id == product_id]
        assert product.available >= 0
        assert product.reserved >= 0
        assert product.available + product.reserved + product.sold == product.total_received
        assert product.reserved == sum(r.quantity for r in active if r.status == ReservationStatus.ACTIVE)
        assert product.sold == sum(r.quantity for r in active if r.status == ReservationStatus.COMMITTED)
    for reservation in state.reservations.values():
        if reservation.status in (ReservationStatus.ACTIVE, ReservationStatus.COMMITTED):
            assert reservation.product_id in state.products


@settings(max_examples=300, deadline=None)
@given(st.lists(stock_specs, max_size=30))
def test_stock_invariants_hold_after_every_event(specs: list[tuple[str, Any, int | None]]) -> None:
    state = StockState({}, {})
    for spec in specs:
        event = stock_event(spec)
        before = copy.deepcopy(state)
        outcome = stock.decide(state, event)
        check_stock_invariants(state)
        assert outcome.status in ("applied", "rejected")
        if outcome.status == "rejected":
            # A rejected event moves no stock; at most it remembers a refused reservation id.
            assert state.products == before.products
            changed = {k: v for k, v in state.reservations.items() if before.reservations.get(k) != v}
            assert set(changed) <= {getattr(event, "reservation_id", None)}
            assert all(r.status == ReservationStatus.REJECTED for r in changed.values())
        if outcome.reason == "insufficient_stock":
            assert before.products[event.product_id].available < event.quantity
        if event.type == "reserve" and outcome.status == "applied":
            assert state.reservations[event.reservation_id] == ReservationState(
                event.product_id, event.quantity, ReservationStatus.ACTIVE
            )


@settings(max_examples=200, deadline=None)
@given(st.lists(stock_specs, max_size=20), st.sampled_from(RESERVATIONS), st.integers(1, 6))
def test_release_before_reserve_cancels_it(
    prefix: list[tuple[str, Any, int | None]], reservation_id: str, quantity: int
) -> None:
    # Whatever came before (for other reservations), a release that overtakes its reserve cancels it.
    state = StockState({}, {})
    for spec in prefix:
        if spec[0] == "restock" or spec[1] != reservation_id:
            stock.decide(state, stock_event(spec))
    product_id = product_of(reservation_id)
    stock.decide(state, make("restock", product_id=product_id, quantity=10))
    release = stock.decide(state, make("release", product_id=product_id, reservation_id=reservation_id))
    assert (release.status, release.reason) == ("applied", "cancelled_before_reserve")
    before = copy.deepcopy(state)
    outcome = stock.decide(
        state, make("reserve", product_id=product_id, quantity=quantity, reservation_id=reservation_id)
    )
    assert (outcome.status, outcome.reason) == ("rejected", "cancelled")
    assert state == before
    # And the cancelled reservation cannot be committed or released afterwards.
    for kind in ("commit", "release"):
        late = stock.decide(state, make(kind, product_id=product_id, reservation_id=reservation_id))
        assert (late.status, late.reason) == ("rejected", "cancelled")
    assert state == before
    check_stock_invariants(state)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 20), st.integers(1, 30))
def test_reserve_beyond_available_is_rejected(available: int, extra: int) -> None:
    state = StockState({}, {})
    if available:
        stock.decide(state, make("restock", product_id=1, quantity=available))
    before = copy.deepcopy(state.products)
    outcome = stock.decide(state, make("reserve", product_id=1, quantity=available + extra, reservation_id="big"))
    expected = "insufficient_stock" if available else "unknown_product"
    assert (outcome.status, outcome.reason) == ("rejected", expected)
    assert state.products == before
    assert state.reservations["big"].status == ReservationStatus.REJECTED
    # Exactly what is available can still be reserved (under another id).
    if available:
        fits = stock.decide(state, make("reserve", product_id=1, quantity=available, reservation_id="fits"))
        assert fits.status == "applied"
        assert state.products[1] == ProductState(available=0, reserved=available, total_received=available)


def test_commit_of_unknown_or_released_reservation_changes_nothing() -> None:
    state = StockState({}, {})
    stock.decide(state, make("restock", product_id=1, quantity=5))
    before = copy.deepcopy(state)
    unknown = stock.decide(state, make("commit", product_id=1, reservation_id="nope"))
    assert (unknown.status, unknown.reason) == ("rejected", "unknown_reservation")
    assert state == before

    assert stock.decide(state, make("reserve", product_id=1, quantity=2, reservation_id="r")).status == "applied"
    assert stock.decide(state, make("release", product_id=1, reservation_id="r")).status == "applied"
    assert state.products[1] == ProductState(available=5, total_received=5)
    before = copy.deepcopy(state)
    for kind in ("commit", "release"):
        late = stock.decide(state, make(kind, product_id=1, reservation_id="r"))
        assert (late.status, late.reason) == ("rejected", "already_released")
    assert state == before


def test_commit_sells_once() -> None:
    state = StockState({}, {})
    stock.decide(state, make("restock", product_id=1, quantity=5))
    stock.decide(state, make("reserve", product_id=1, quantity=3, reservation_id="r"))
    assert stock.decide(state, make("commit", product_id=1, reservation_id="r")).status == "applied"
    assert state.products[1] == ProductState(available=2, reserved=0, sold=3, total_received=5)
    before = copy.deepcopy(state)
    for kind in ("commit", "release"):
        late = stock.decide(state, make(kind, product_id=1, reservation_id="r"))
        assert (late.status, late.reason) == ("rejected", "already_committed")
    assert state == before


def test_release_or_commit_naming_another_product_changes_nothing() -> None:
    state = StockState({}, {})
    stock.decide(state, make("restock", product_id=1, quantity=5))
    stock.decide(state, make("restock", product_id=2, quantity=5))
    stock.decide(state, make("reserve", product_id=1, quantity=3, reservation_id="r"))
    before = copy.deepcopy(state)
    for kind in ("release", "commit"):
        outcome = stock.decide(state, make(kind, product_id=2, reservation_id="r"))
        assert (outcome.status, outcome.reason) == ("rejected", "product_mismatch")
    assert state == before


def test_events_are_built_like_the_producer_builds_them() -> None:
    # The helper above must make what the worker receives: derived keys for reservation events.
    event = make("reserve", product_id=1, quantity=1, reservation_id="abc")
    assert isinstance(event, Reserve)
    assert event.key == "reserve:abc"
    assert isinstance(make("release", product_id=1, reservation_id="abc"), Release)
    assert isinstance(make("commit", product_id=1, reservation_id="abc"), Commit)
    assert isinstance(make("restock", product_id=1, quantity=1), Restock)
    assert isinstance(make("unlike", article_id=1, user_id=1), Unlike)
