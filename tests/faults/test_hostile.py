"""Hostile messages pushed straight onto a partition queue, bypassing the producer: pickle, oversized bodies,
missing fields, SQL in ids, unknown types. Every one is dead-lettered (or rejected), never run; the worker keeps
going; no state changes; no secret shows in what is stored. SQL in string ids (reservation ids, idempotency keys),
sent through the producer or raw, is data: applied or rejected for a stated reason, stored as given, never run."""

from __future__ import annotations

import json
import pickle
from types import SimpleNamespace

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from seqproc import producer
from seqproc.models.outcomes import outcome_store
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter, LedgerEntry
from seqproc.models.tables.stock import Reservation
from seqproc.models.wire import article_key, bell_key, partition_for, product_key, queue_name
from seqproc.worker.consume.decode import MAX_STORED_BODY_BYTES, decode_message
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import DATA_TABLES, publish_raw, wait_for

pytestmark = pytest.mark.services


class Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pickle payload was executed",))


def task(n: int, **extra: object) -> dict:
    return {"task": "seqproc.apply", "id": f"hostile-{n}", "lang": "py", **extra}


def events_message(events: list[object]) -> str:
    return json.dumps([[], {"events": events}, {}])


def test_hostile_messages_are_dead_lettered_and_change_nothing(clean: Settings, start_worker, engine: Engine) -> None:
    worker = start_worker(clean)
    queue = queue_name(partition_for(article_key(1), clean.partitions))
    good = {"key": "k", "id": "i", "stamp": 1, "type": "like", "article_id": 1, "user_id": 1}
    hostile = [
        (pickle.dumps(Boom()), "application/x-python-serialize"),  # pickle: never unpickled
        (b"\x80\x04" + b"x" * 100, "application/x-python-serialize"),
        ("A" * (5 * 1024 * 1024), "application/json"),  # over the size limit
        (events_message([{**good, "article_id": "1; DROP TABLE article_like; --"}]), "application/json"),
        (events_message([{**good, "user_id": "' OR 1=1 --"}]), "application/json"),
        (events_message([{k: v for k, v in good.items() if k != "user_id"}]), "application/json"),  # missing field
        (events_message([{**good, "type": "drop_database"}]), "application/json"),  # unknown type
        (events_message([{**good, "article_id": -5}]), "application/json"),  # negative id
        (events_message([{**good, "key": "x" * 10_000}]), "application/json"),  # huge string
        (events_message([{**good, "user_id": "9" * 1_000_000}]), "application/json"),  # huge invalid field
        (
            events_message([{**good, "type": "reserve", "product_id": 1, "quantity": -3, "reservation_id": "r"}]),
            "application/json",
        ),  # negative quantity
        (events_message(["not an object", 42, None]), "application/json"),
        (json.dumps({"events": "nope"}), "application/json"),
    ]
    for n, (body, content_type) in enumerate(hostile):
        publish_raw(clean, queue, body, content_type, task(n))
    raw = redis.Redis.from_url(clean.broker_url)
    raw.lpush(queue, b"\xff\xfe not even a kombu envelope")
    raw.lpush(bell_key(queue), "1")

    # One dead letter per message, except the message of three bad events (three), plus the raw bytes: 15.
    expected = len(hostile) - 1 + 3 + 1
    with engine.connect() as conn:
        wait_for(
            lambda: conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one() >= expected,
            60,
            f"{expected} dead letters",
        )
        conn.rollback()
        letters = conn.execute(select(DeadLetter.error, DeadLetter.body, DeadLetter.content_type)).all()
        for table in DATA_TABLES:
            if table in ("dead_letter", "idempotency_ledger"):
                continue
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() == 0, table  # nothing changed
        assert conn.execute(text("SELECT count(*) FROM idempotency_ledger")).scalar_one() == 0
    assert len(letters) == expected
    errors = " | ".join(error for error, _, _ in letters)
    assert "only application/json" in errors
    assert "byte limit" in errors
    assert "must be an integer" in errors
    assert "is required" in errors
    assert "must be one of" in errors
    assert "must be >= 1" in errors
    assert "at most" in errors
    # Oversized bodies, and oversized invalid events, are kept truncated, with a hash.
    assert all(len(body) <= MAX_STORED_BODY_BYTES + 200 for _, body, _ in letters)
    assert sum("[truncated: " in body for _, body, _ in letters) == 2
    assert worker.process.poll() is None
    assert producer.like(1, 1).wait(timeout_s=30).status == "applied"  # and it still works


def test_an_invalid_event_is_dead_lettered_with_its_body_cut() -> None:
    """Decoding alone (no service): a dead letter of one invalid event keeps at most the stored-body limit."""
    event = {"key": "k", "id": "i", "stamp": 1, "type": "like", "article_id": 1, "user_id": "9" * 1_000_000}
    message = SimpleNamespace(
        delivery_info={"routing_key": queue_name(0)},
        headers={"id": "t"},
        content_type="application/json",
        body=events_message([event]).encode(),
    )
    decoded = decode_message(message, partitions=16)
    assert decoded.events == []
    [letter] = decoded.dead_letters
    assert "user_id" in letter.error
    assert len(letter.body) <= MAX_STORED_BODY_BYTES + 200
    assert "[truncated: " in letter.body


#: String ids that look like SQL: quotes, comments, statement separators, placeholders, a backslash.
SQL_IDS = (
    "r'; DROP TABLE reservation;--",
    'r"; DELETE FROM product_stock; --',
    "r') OR ('1'='1",
    "r\\'; TRUNCATE idempotency_ledger CASCADE; --",
    "Robert'); DROP TABLE article_like;--",
    "r%s %(x)s $1 ? :id",
)


def raw_event(event_type: str, n: int, **fields: object) -> dict:
    key = fields.pop("key", None) or f"{event_type}:{fields['reservation_id']}"
    return {"type": event_type, "key": key, "id": f"raw'--{n}", "stamp": 10**18 + n, **fields}


def test_sql_in_string_ids_is_data(clean: Settings, start_worker, engine: Engine) -> None:
    """Through the producer and as raw messages: reservation ids and idempotency keys full of SQL are applied or
    rejected for a stated reason, stored exactly as given; every table is intact."""
    worker = start_worker(clean)

    # Through the producer, product 1.
    restock_key = "restock'); DROP TABLE product_stock; --"
    assert producer.restock(1, 100, idempotency_key=restock_key).wait(timeout_s=30).status == "applied"
    assert producer.restock(1, 100, idempotency_key=restock_key).wait(timeout_s=30).status == "duplicate"
    for rid in SQL_IDS:
        assert producer.reserve(1, 2, reservation_id=rid).wait(timeout_s=30).status == "applied", rid
    assert producer.commit(1, SQL_IDS[0]).wait(timeout_s=30).status == "applied"
    assert producer.release(1, SQL_IDS[1]).wait(timeout_s=30).status == "applied"
    like_key = "l' OR '1'='1"
    assert producer.like(1, 1, idempotency_key=like_key).wait(timeout_s=30).status == "applied"
    assert producer.like(1, 2, idempotency_key=like_key).wait(timeout_s=30).status == "duplicate"  # the same key
    with pytest.raises(producer.InvalidEvent, match="reservation_id"):
        producer.reserve(1, 1, reservation_id="r\x00'; DROP TABLE reservation;--")  # a control character

    # Raw, bypassing the producer, product 2.
    restock_raw = "rk'; UPDATE product_stock SET available = 999999; --"
    raw_ids = [f"p2{rid}" for rid in SQL_IDS]  # a reservation id names one reservation, whatever its product
    events = [
        raw_event("restock", 1, key=restock_raw, product_id=2, quantity=5),
        *(raw_event("reserve", 10 + n, product_id=2, quantity=1, reservation_id=rid) for n, rid in enumerate(raw_ids)),
        raw_event("reserve", 20, product_id=2, quantity=50, reservation_id="big'; DROP TABLE reservation;--"),
        raw_event("commit", 21, product_id=2, reservation_id=SQL_IDS[2]),  # product 1's reservation
        raw_event("reserve", 22, key="'; DROP TABLE dead_letter;--", product_id=2, quantity=1, reservation_id="x"),
    ]
    queue = queue_name(partition_for(product_key(2), clean.partitions))
    publish_raw(clean, queue, events_message(events), "application/json", task(100))
    store = outcome_store(clean.result_backend, ttl_s=60)
    outcomes = {}
    for event in events[:-1]:
        outcome = store.wait(str(event["id"]), 30)
        assert outcome is not None, event
        outcomes[event["id"]] = (outcome.status, outcome.reason)

    assert outcomes["raw'--1"] == ("applied", None)
    assert [outcomes[f"raw'--{10 + n}"] for n in range(len(SQL_IDS))] == [("applied", None)] * 5 + [
        ("rejected", "insufficient_stock")
    ]
    assert outcomes["raw'--20"] == ("rejected", "insufficient_stock")
    assert outcomes["raw'--21"] == ("rejected", "product_mismatch")

    with engine.connect() as conn:
        wait_for(
            lambda: conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one() >= 1, 30, "a dead letter"
        )
        conn.rollback()
        [(error, event_key)] = conn.execute(select(DeadLetter.error, DeadLetter.event_key)).all()
        assert "key must be" in error  # a reserve's key is derived from its reservation id
        assert event_key == "'; DROP TABLE dead_letter;--"
        for table in DATA_TABLES:  # every table is still there
            conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
        stored = set(conn.execute(select(Reservation.reservation_id, Reservation.product_id)).all())
        assert {(rid, 1) for rid in SQL_IDS} <= stored  # byte for byte
        assert {(rid, 2) for rid in raw_ids[:-1]} <= stored
        ledger = set(conn.execute(select(LedgerEntry.key)).scalars())
        assert f"restock:{restock_key}" in ledger
        assert f"like:{like_key}" in ledger
        assert f"restock:{restock_raw}" in ledger
        one, two = product_state(conn, 1), product_state(conn, 2)
        assert (one["total_received"], one["sold"], one["reserved"]) == (100, 2, 2 * (len(SQL_IDS) - 2))
        assert (two["total_received"], two["available"], two["reserved"]) == (5, 0, 5)
        assert check_invariants(conn).ok
    assert worker.process.poll() is None
