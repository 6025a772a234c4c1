"""Hostile messages pushed straight onto a partition queue, bypassing the producer: pickle, oversized bodies,
missing fields, SQL in ids, unknown types. Every one is dead-lettered (or rejected), never run; the worker keeps
going; no state changes; no secret shows in what is stored."""

from __future__ import annotations

import json
import pickle

import pytest
import redis
from kombu import Connection
from sqlalchemy import Engine, func, select, text

import producer
from models.ledger import DeadLetter
from models.settings import Settings
from producer.routing import article_key, partition_for, queue_name
from tests.conftest import DATA_TABLES, wait_for

pytestmark = pytest.mark.services


class Boom:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("pickle payload was executed",))


def publish_raw(settings: Settings, queue: str, body: bytes | str, content_type: str, headers: dict) -> None:
    with Connection(settings.broker_url) as conn:
        conn.Producer().publish(
            body,
            routing_key=queue,
            exchange="",
            content_type=content_type,
            content_encoding="binary" if isinstance(body, bytes) else "utf-8",
            headers=headers,
            declare=[],
        )


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
    raw.lpush("seqproc.bell." + queue, "1")

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
    assert all(len(body) < 1_000_000 for _, body, _ in letters)  # oversized bodies are kept truncated, with a hash
    assert worker.process.poll() is None
    assert producer.like(1, 1).wait(timeout_s=30).status == "applied"  # and it still works
