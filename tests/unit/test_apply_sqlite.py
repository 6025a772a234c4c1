"""``apply_batch`` against a migrated SQLite file: any duplication, redelivery or batching of a stream ends in the
same state as applying each event once, in order; the invariants hold after every committed batch."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, select, text

from seqproc.models.errors import PartitionFenced
from seqproc.models.events import Event, parse_event, reservation_key
from seqproc.models.outcomes import Outcome
from seqproc.models.tables.base import table_of
from seqproc.models.tables.partition import Partition
from seqproc.worker.engine.apply import BatchResult, apply_batch
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state

PARTITION = 0
_ids = itertools.count(1)

HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    # One database per test; each example empties it first (clear_sqlite).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def make(event_type: str, *, stamp: int | None = None, key: str | None = None, **fields: Any) -> Any:
    """A wire-valid event, filled in as ``producer.build.build_event`` does."""
    n = next(_ids)
    if event_type in ("reserve", "release", "commit"):
        key = reservation_key(event_type, fields["reservation_id"])
    data = {"type": event_type, "key": key or f"k{n}", "id": f"id{n}", "stamp": stamp or n, **fields}
    return parse_event(data)


def apply(engine: Engine, events: Sequence[Event], *, epoch: int | None = None) -> BatchResult:
    """One batch, one transaction, as the worker does it."""
    with engine.begin() as conn:
        return apply_batch(conn, PARTITION, events, epoch=epoch)


def snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the events decide, without timestamps."""
    queries = {
        "article_like": "SELECT article_id, user_id, stamp FROM article_like ORDER BY 1, 2",
        "article_unlike": "SELECT article_id, user_id, stamp FROM article_unlike ORDER BY 1, 2",
        # A count that went back to 0 may keep its row or never have had one: the same state.
        "article_like_count": "SELECT article_id, like_count FROM article_like_count WHERE like_count <> 0 ORDER BY 1",
        "product_stock": "SELECT product_id, available, reserved, sold, total_received FROM product_stock ORDER BY 1",
        "reservation": "SELECT reservation_id, product_id, quantity, status FROM reservation ORDER BY 1",
        "ledger": "SELECT key, status, reason FROM idempotency_ledger ORDER BY 1",
    }
    return {name: [tuple(row) for row in conn.execute(text(sql))] for name, sql in queries.items()}


def assert_invariants(engine: Engine) -> None:
    with engine.connect() as conn:
        report = check_invariants(conn)
    assert report.ok, report.violations


# ----------------------------------------------------------------------------------------------------- streams

ARTICLES = (1, 2)
USERS = (1, 2, 3)
PRODUCTS = (1, 2)
RESERVATIONS = ("r1", "r2", "r3", "r4", "r5")

event_specs = st.one_of(
    st.tuples(st.sampled_from(["like", "unlike"]), st.sampled_from(ARTICLES), st.sampled_from(USERS)),
    st.tuples(st.just("restock"), st.sampled_from(PRODUCTS), st.integers(1, 5)),
    st.tuples(st.just("reserve"), st.sampled_from(RESERVATIONS), st.integers(1, 4)),
    st.tuples(st.sampled_from(["release", "commit"]), st.sampled_from(RESERVATIONS), st.none()),
)


def stream_event(spec: tuple[str, Any, Any]) -> Any:
    kind, target, extra = spec
    if kind in ("like", "unlike"):
        return make(kind, article_id=target, user_id=extra)
    if kind == "restock":
        return make("restock", product_id=target, quantity=extra)
    fields: dict[str, Any] = {"product_id": PRODUCTS[RESERVATIONS.index(target) % 2], "reservation_id": target}
    if kind == "reserve":
        fields["quantity"] = extra
    return make(kind, **fields)


@st.composite
def streams(draw: st.DrawFn) -> list[Event]:
    """Distinct events (distinct keys), in the order the producer issued them (stamps rise)."""
    events: list[Event] = []
    keys: set[str] = set()
    for spec in draw(st.lists(event_specs, min_size=1, max_size=40)):
        event = stream_event(spec)
        if event.key not in keys:  # reserve/release/commit keys are one per reservation id
            keys.add(event.key)
            events.append(event)
    return events


@st.composite
def deliveries(draw: st.DrawFn, events: list[Event]) -> list[Event]:
    """Each event 1-3 times: the original in order, its copies at random later positions (redelivery)."""
    delivered = list(events)
    for event in events:
        for _ in range(draw(st.integers(0, 2))):
            after = delivered.index(event)  # the first copy: the original
            delivered.insert(draw(st.integers(after + 1, len(delivered))), event)
    return delivered


@st.composite
def batches(draw: st.DrawFn, events: list[Event]) -> list[list[Event]]:
    """``events`` cut into consecutive batches of random sizes."""
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(events) - 1)), max_size=len(events))))
    bounds = [0, *(c for c in cuts if c < len(events)), len(events)]
    return [events[a:b] for a, b in itertools.pairwise(bounds) if b > a]


@dataclass(frozen=True)
class PropertyDatabase:
    """Where the property tests below apply their streams, and how each example empties it first."""

    engine: Engine
    clear: Callable[[], None]


@pytest.fixture
def property_db(sqlite_engine: Engine, clear_sqlite: Callable[[], None]) -> PropertyDatabase:
    """A migrated SQLite file; tests/integration/test_apply_pg.py runs the same properties on PostgreSQL."""
    return PropertyDatabase(sqlite_engine, clear_sqlite)


@HYPOTHESIS
@given(data=st.data())
def test_any_duplication_and_batching_ends_as_applying_once_in_order(
    property_db: PropertyDatabase, data: st.DataObject
) -> None:
    events = data.draw(streams(), label="events")
    delivered = data.draw(deliveries(events), label="delivered")
    split = data.draw(batches(delivered), label="batches")

    # Reference: each event once, in order, one transaction.
    property_db.clear()
    reference = apply(property_db.engine, events)
    first_outcome = {event.key: outcome for event, outcome in zip(events, reference.outcomes, strict=True)}
    assert reference.duplicates == 0
    with property_db.engine.connect() as conn:
        expected = snapshot(conn)
    assert_invariants(property_db.engine)

    property_db.clear()
    seen: set[str] = set()
    for batch in split:
        result = apply(property_db.engine, batch)
        assert_invariants(property_db.engine)  # (c): after every committed batch
        assert len(result.outcomes) == len(batch)
        for event, outcome in zip(batch, result.outcomes, strict=True):
            if event.key in seen:
                assert outcome == Outcome("duplicate", first=first_outcome[event.key])
            else:
                assert outcome == first_outcome[event.key]
                seen.add(event.key)
        assert result.duplicates == sum(o.status == "duplicate" for o in result.outcomes)
    assert seen == set(first_outcome)
    with property_db.engine.connect() as conn:
        assert snapshot(conn) == expected


@HYPOTHESIS
@given(data=st.data())
def test_one_batch_or_one_event_per_batch_is_the_same(property_db: PropertyDatabase, data: st.DataObject) -> None:
    events = data.draw(streams(), label="events")
    property_db.clear()
    together = apply(property_db.engine, events).outcomes
    with property_db.engine.connect() as conn:
        expected = snapshot(conn)
    property_db.clear()
    alone = [apply(property_db.engine, [event]).outcomes[0] for event in events]
    assert alone == together
    with property_db.engine.connect() as conn:
        assert snapshot(conn) == expected


@HYPOTHESIS
@given(data=st.data())
def test_like_unlike_out_of_order_ends_in_the_newest_action(property_db: PropertyDatabase, data: st.DataObject) -> None:
    kinds = data.draw(st.lists(st.sampled_from(["like", "unlike"]), min_size=1, max_size=12), label="actions")
    # Issued in this order: stamps rise. A second user's like keeps the article's count honest alongside.
    issued = [make(kind, stamp=1000 + i, article_id=7, user_id=1) for i, kind in enumerate(kinds)]
    other = make("like", stamp=5000, article_id=7, user_id=2)
    delivered = data.draw(st.permutations([*issued, other]), label="delivered")
    split = data.draw(batches(delivered), label="batches")

    property_db.clear()
    for batch in split:
        apply(property_db.engine, batch)
        assert_invariants(property_db.engine)
    newest = issued[-1]
    with property_db.engine.connect() as conn:
        liked = conn.execute(text("SELECT stamp FROM article_like WHERE article_id = 7 AND user_id = 1")).all()
        unliked = conn.execute(text("SELECT stamp FROM article_unlike WHERE article_id = 7 AND user_id = 1")).all()
        state = article_state(conn, 7)
    if newest.type == "like":
        assert (liked, unliked) == ([(newest.stamp,)], [])
        assert state["like_count"] == 2
    else:
        assert (liked, unliked) == ([], [(newest.stamp,)])
        assert state["like_count"] == 1
    assert state["consistent"]


def _oversell(engine: Engine, batch_sizes: list[int]) -> list[Outcome]:
    apply(engine, [make("restock", product_id=9, quantity=100)])
    reserves = [make("reserve", product_id=9, quantity=1, reservation_id=f"o{i}") for i in range(200)]
    outcomes: list[Outcome] = []
    start = 0
    for size in itertools.cycle(batch_sizes):
        if start >= len(reserves):
            break
        outcomes += apply(engine, reserves[start : start + size]).outcomes
        assert_invariants(engine)
        start += size
    return outcomes


@pytest.mark.parametrize("batch_sizes", [[200], [1], [7], [64, 3, 50, 1]], ids=["one", "each", "sevens", "mixed"])
def test_200_reserves_against_100_units(sqlite_engine: Engine, batch_sizes: list[int]) -> None:
    outcomes = _oversell(sqlite_engine, batch_sizes)
    assert outcomes[:100] == [Outcome("applied")] * 100
    assert outcomes[100:] == [Outcome("rejected", "insufficient_stock")] * 100
    with sqlite_engine.connect() as conn:
        state = product_state(conn, 9)
        statuses = dict(
            conn.execute(text("SELECT status, COUNT(*) FROM reservation WHERE product_id = 9 GROUP BY status")).all()
        )
    assert (state["available"], state["reserved"], state["sold"], state["total_received"]) == (0, 100, 0, 100)
    assert state["active_reservations"] == 100
    assert statuses == {"active": 100, "rejected": 100}


def test_duplicate_within_one_batch_reports_the_first_outcome(sqlite_engine: Engine) -> None:
    restock = make("restock", product_id=3, quantity=1)
    first = make("reserve", product_id=3, quantity=1, reservation_id="a")
    second = make("reserve", product_id=3, quantity=1, reservation_id="b")
    result = apply(sqlite_engine, [restock, first, second, first, second, restock])
    assert result.outcomes == [
        Outcome("applied"),
        Outcome("applied"),
        Outcome("rejected", "insufficient_stock"),
        Outcome("duplicate", first=Outcome("applied")),
        Outcome("duplicate", first=Outcome("rejected", "insufficient_stock")),
        Outcome("duplicate", first=Outcome("applied")),
    ]
    assert (result.applied, result.rejected, result.duplicates) == (2, 1, 3)
    # Later, in another batch: the ledger still reports the first outcome.
    again = apply(sqlite_engine, [second])
    assert again.outcomes == [Outcome("duplicate", first=Outcome("rejected", "insufficient_stock"))]
    with sqlite_engine.connect() as conn:
        assert product_state(conn, 3)["total_received"] == 1


def test_stale_epoch_cannot_commit(sqlite_engine: Engine) -> None:
    with sqlite_engine.begin() as conn:
        conn.execute(insert(table_of(Partition)), [{"partition": PARTITION, "epoch": 2}])
    with pytest.raises(PartitionFenced):
        apply(sqlite_engine, [make("like", article_id=1, user_id=1)], epoch=1)
    with sqlite_engine.connect() as conn:
        assert snapshot(conn)["article_like"] == []
        assert snapshot(conn)["ledger"] == []
    result = apply(sqlite_engine, [make("like", article_id=1, user_id=1)], epoch=2)
    assert result.applied == 1
    with sqlite_engine.connect() as conn:
        counters = conn.execute(select(table_of(Partition).c.applied)).scalar_one()
        assert counters == 1
        assert article_state(conn, 1)["like_count"] == 1


def test_caller_key_cannot_swallow_a_reservation(sqlite_engine: Engine) -> None:
    """Ledger keys are scoped by event type: a caller key that looks like a reservation key names another event."""
    apply(sqlite_engine, [make("restock", product_id=4, quantity=5)])
    apply(sqlite_engine, [make("like", key="reserve:order-1", article_id=1, user_id=1)])
    result = apply(sqlite_engine, [make("reserve", product_id=4, quantity=2, reservation_id="order-1")])
    assert result.outcomes == [Outcome("applied")]
    with sqlite_engine.connect() as conn:
        assert product_state(conn, 4)["reserved"] == 2


def test_one_request_id_for_two_event_types_names_two_events(sqlite_engine: Engine) -> None:
    result = apply(
        sqlite_engine,
        [make("like", key="req-1", article_id=1, user_id=1), make("restock", key="req-1", product_id=4, quantity=5)],
    )
    assert result.outcomes == [Outcome("applied"), Outcome("applied")]
    again = apply(sqlite_engine, [make("like", key="req-1", article_id=1, user_id=1)])
    assert again.outcomes[0].status == "duplicate"


def test_a_reservation_id_used_again_on_another_product_is_a_product_mismatch(sqlite_engine: Engine) -> None:
    """``reserve:<id>`` is in the ledger already: on the same product a reserve is a duplicate (a retry), on another
    product it is rejected ``product_mismatch``, as a release or a commit naming another product is; nothing
    changes, and the key's first outcome stays."""
    apply(sqlite_engine, [make("restock", product_id=5, quantity=5), make("restock", product_id=6, quantity=5)])
    first = make("reserve", product_id=5, quantity=2, reservation_id="order-7")
    assert apply(sqlite_engine, [first]).outcomes == [Outcome("applied")]
    elsewhere = make("reserve", product_id=6, quantity=1, reservation_id="order-7")
    again = make("reserve", product_id=5, quantity=2, reservation_id="order-7")
    release_elsewhere = make("release", product_id=6, reservation_id="order-7")
    result = apply(sqlite_engine, [elsewhere, again, release_elsewhere])
    assert result.outcomes == [
        Outcome("rejected", "product_mismatch"),
        Outcome("duplicate", first=Outcome("applied")),
        Outcome("rejected", "product_mismatch"),
    ]
    assert (result.applied, result.rejected, result.duplicates) == (0, 2, 1)
    # In the batch that applies the reservation: the copy on another product is refused the same way.
    apply(sqlite_engine, [make("restock", product_id=5, quantity=1)])
    batch = [
        make("reserve", product_id=5, quantity=1, reservation_id="order-8"),
        make("reserve", product_id=6, quantity=1, reservation_id="order-8"),
        make("reserve", product_id=5, quantity=1, reservation_id="order-8"),
    ]
    assert apply(sqlite_engine, batch).outcomes == [
        Outcome("applied"),
        Outcome("rejected", "product_mismatch"),
        Outcome("duplicate", first=Outcome("applied")),
    ]
    with sqlite_engine.connect() as conn:
        assert (product_state(conn, 5)["reserved"], product_state(conn, 6)["reserved"]) == (3, 0)
        ledger = dict(conn.execute(text("SELECT key, coalesce(status, 'applied') FROM idempotency_ledger")).all())
        reservations = conn.execute(text("SELECT reservation_id, product_id, status FROM reservation ORDER BY 1"))
        assert [tuple(r) for r in reservations] == [("order-7", 5, "active"), ("order-8", 5, "active")]
    assert ledger["reserve:order-7"] == ledger["reserve:order-8"] == "applied"
    assert_invariants(sqlite_engine)
