"""Poison events: a failed event parks its entity; later events of it wait in the dead-letter store, in order; a
replay applies them exactly once, in order, at its place in the stream."""

from __future__ import annotations

from itertools import count
from typing import Any

from sqlalchemy import Engine, func, select

from seqproc.models.events import parse_event
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry, ParkedKey
from seqproc.worker.engine.apply import apply_batch, park
from seqproc.worker.ops.inspect import product_state

_n = count(1)


def event(kind: str, **fields: Any) -> Any:
    n = next(_n)
    data = {"type": kind, "key": f"k{n}", "id": f"e{n}", "stamp": 1000 + n, **fields}
    if kind in ("reserve", "release", "commit"):
        data["key"] = f"{kind}:{fields['reservation_id']}"
    return parse_event(data)


def replay(entity: str) -> Any:
    n = next(_n)
    return parse_event({"type": "replay", "key": f"replay-{n}", "id": f"e{n}", "stamp": 1000 + n, "entity": entity})


def apply(engine: Engine, events: list[Any]) -> Any:
    with engine.begin() as conn:
        return apply_batch(conn, 0, events, epoch=None)


def parked(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(table_of(ParkedKey).c.entity_key)).scalars())


def test_a_failed_event_parks_its_key_and_the_later_ones_queue_behind_it(sqlite_engine: Engine) -> None:
    first = event("restock", product_id=7, quantity=5)
    with sqlite_engine.begin() as conn:
        park(conn, 0, None, first, RuntimeError("a bug"))
    assert parked(sqlite_engine) == {"product:7"}

    later = [event("restock", product_id=7, quantity=1), event("reserve", product_id=7, quantity=2, reservation_id="a")]
    other = event("restock", product_id=8, quantity=3)
    result = apply(sqlite_engine, [later[0], other, later[1]])
    assert [(o.status, o.reason) for o in result.outcomes] == [
        ("rejected", "parked"),
        ("applied", None),
        ("rejected", "parked"),
    ]
    with sqlite_engine.connect() as conn:
        assert product_state(conn, 7)["total_received"] == 0  # nothing of product 7 applied
        assert product_state(conn, 8)["total_received"] == 3  # other keys flow on
        letters = conn.execute(
            select(DeadLetter.event_key).where(DeadLetter.entity_key == "product:7").order_by(DeadLetter.id)
        )
        assert [k for (k,) in letters] == [first.key, later[0].key, later[1].key]  # in order
        ledger = set(conn.execute(select(LedgerEntry.key)).scalars())
    assert not ledger & {e.ledger_key for e in [first, *later]}  # claims given back: a replay finds them new


def test_replay_applies_each_dead_letter_once_in_order_then_unparks(sqlite_engine: Engine) -> None:
    restock = event("restock", product_id=7, quantity=5)
    reserve = event("reserve", product_id=7, quantity=4, reservation_id="r1")
    with sqlite_engine.begin() as conn:
        park(conn, 0, None, restock, RuntimeError("a bug"))
    apply(sqlite_engine, [reserve])  # parked behind it

    after = event("reserve", product_id=7, quantity=1, reservation_id="r2")
    result = apply(sqlite_engine, [replay("product:7"), after])
    assert result.outcomes[0].status == "applied"
    assert result.outcomes[0].reason == "replayed 2"
    # The reserve only succeeds if the restock came back before it: order kept.
    assert [(e.key, o.status) for e, o in result.replayed] == [(restock.key, "applied"), (reserve.key, "applied")]
    assert result.outcomes[1].status == "applied"  # after the replay, in the same batch: no longer parked
    assert parked(sqlite_engine) == set()
    with sqlite_engine.connect() as conn:
        state = product_state(conn, 7)
        assert (state["available"], state["reserved"], state["total_received"]) == (0, 5, 5)
        pending = conn.execute(
            select(func.count()).select_from(DeadLetter).where(DeadLetter.replayed_at.is_(None))
        ).scalar_one()
        assert pending == 0

    again = apply(sqlite_engine, [replay("product:7")])  # a second replay finds nothing left to do
    assert again.outcomes[0].reason == "replayed 0"
    with sqlite_engine.connect() as conn:
        assert product_state(conn, 7)["total_received"] == 5  # nothing applied twice


def test_events_parked_earlier_in_the_same_batch_follow_the_replayed_ones(sqlite_engine: Engine) -> None:
    first = event("restock", product_id=9, quantity=2)
    with sqlite_engine.begin() as conn:
        park(conn, 0, None, first, RuntimeError("a bug"))
    early = event("reserve", product_id=9, quantity=2, reservation_id="x")  # arrives before the replay, same batch
    result = apply(sqlite_engine, [early, replay("product:9")])
    assert [o.status for o in result.outcomes] == ["applied", "applied"]
    assert [e.key for e, _ in result.replayed] == [first.key]
    with sqlite_engine.connect() as conn:
        state = product_state(conn, 9)
        assert (state["available"], state["reserved"]) == (0, 2)  # the restock came first, then the reserve
