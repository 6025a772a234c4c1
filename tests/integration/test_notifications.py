"""Outcome notifications (``notify="user:42"``) on the real Redis and PostgreSQL, with real worker processes: every
rejected event of a stream is notified, once; a duplicate is not notified again; cursors; what a topic keeps."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis
from sqlalchemy import Engine

import seqproc
from seqproc import producer
from seqproc.models.errors import InvalidEvent
from seqproc.models.notifications import Notice, Notices, Notification
from seqproc.models.outcomes import RedisOutcomeStore
from seqproc.models.pending import index_of
from seqproc.models.settings import Settings
from seqproc.models.wire import notified_key, notify_key
from tests.conftest import wait_for

pytestmark = pytest.mark.services


def read_all(topic: str, expected: int, *, timeout_s: float = 30) -> list[seqproc.Notification]:
    """Every notification of ``topic`` until ``expected`` came, following the cursor."""
    found: list[seqproc.Notification] = []
    after = None
    for _ in range(50):
        batch = seqproc.notifications(topic, after=after, timeout_s=timeout_s)
        if not batch:
            break
        found += batch
        after = batch[-1].cursor
        if len(found) >= expected:
            break
    return found


def test_every_rejected_reservation_is_notified_once_and_a_duplicate_is_not(
    clean: Settings, start_worker, engine: Engine
) -> None:
    start_worker(clean)
    seqproc.restock(7, 5).wait(timeout_s=30)
    receipts = [seqproc.reserve(7, 1, reservation_id=f"r{n}", notify="user:1", notify_on="rejected") for n in range(12)]
    outcomes = seqproc.wait_all(receipts, timeout_s=30)
    rejected = {f"reserve:r{n}" for n, o in enumerate(outcomes) if o.status == "rejected"}
    assert len(rejected) == 7  # five units for twelve reservations

    told = read_all("user:1", len(rejected))
    assert {n.idempotency_key for n in told} == rejected
    assert len(told) == len(rejected)  # once each, and none of the applied ones (notify_on="rejected")
    first = told[0]
    assert (first.type, first.key, first.status) == ("reserve", "product:7", "rejected")
    assert first.reason == "insufficient_stock"

    # The same reservations sent again (a client retry): duplicates, not notified twice.
    again = [seqproc.reserve(7, 1, reservation_id=f"r{n}", notify="user:1", notify_on="rejected") for n in range(12)]
    assert {o.status for o in seqproc.wait_all(again, timeout_s=30)} == {"duplicate"}
    assert seqproc.notifications("user:1", after=told[-1].cursor, timeout_s=1) == []

    # Every outcome, without notify_on; the cursor gives what follows it, and waits for it.
    like = seqproc.like(3, 9, notify="user:9")
    applied = seqproc.notifications("user:9", timeout_s=30)
    assert [(n.status, n.reason, n.key, n.type) for n in applied] == [("applied", None, "article:3", "like")]
    assert applied[0].idempotency_key == like.event_id  # no key given: the event's own id is its key
    seqproc.unlike(3, 9, notify="user:9")
    then = seqproc.notifications("user:9", after=applied[0].cursor, timeout_s=30)
    assert [(n.type, n.status) for n in then] == [("unlike", "applied")]
    assert seqproc.notifications("user:9", after=then[-1].cursor, timeout_s=0.2) == []
    assert [n.type for n in seqproc.notifications("user:9")] == ["like", "unlike"]  # from the oldest kept


def test_every_front_carries_notify(clean: Settings, start_worker, start_relay, engine: Engine) -> None:
    """Direct, outbox (through the relay), asyncio and asyncio's stream: one topic, each outcome once."""
    start_worker(clean)
    start_relay(clean)
    with engine.begin() as conn:
        seqproc.outbox.restock(conn, 4, 1, notify="user:5")
    restocked = seqproc.notifications("user:5", timeout_s=30)  # relayed, then applied: then the reservations
    assert [(n.type, n.status) for n in restocked] == [("restock", "applied")]
    seqproc.reserve(4, 1, reservation_id="a", notify="user:5")

    async def run() -> list[seqproc.Notification]:
        await seqproc.aio.reserve(4, 1, reservation_id="b", notify="user:5", notify_on="rejected")
        found = []
        async for note in seqproc.aio.notifications("user:5", after=restocked[0].cursor):
            found.append(note)
            if len(found) == 2:
                break
        await seqproc.aio.aclose()
        return found

    found = asyncio.run(asyncio.wait_for(run(), 60))
    assert Counter((n.type, n.status) for n in found) == {
        ("reserve", "applied"): 1,
        ("reserve", "rejected"): 1,
    }
    assert [n.idempotency_key for n in found if n.status == "rejected"] == ["reserve:b"]


def test_a_topic_is_capped_and_expires(clean: Settings) -> None:
    store = RedisOutcomeStore(clean.result_backend, ttl_s=60)
    notices = [
        Notice("user:7", f"like:k{n}", Notification("", f"k{n}", "like", "article:1", "applied", None))
        for n in range(1000)
    ]
    store.put_many([], Notices(notices, ttl_s=30, max=100))
    client = redis.Redis.from_url(clean.result_backend)
    # MAXLEN ~: Redis trims whole stream nodes (100 entries each by default), never below the cap.
    assert 100 <= client.xlen(notify_key("user:7")) <= 200
    assert 0 < client.ttl(notify_key("user:7")) <= 30
    assert 0 < client.ttl(notified_key("user:7")) <= 30
    kept = read_all("user:7", 200, timeout_s=0)
    assert kept[-1].idempotency_key == "k999"  # the newest kept, the oldest dropped
    # Told once: publishing the same notices again appends nothing.
    store.put_many([], Notices(notices[-5:], ttl_s=30, max=100))
    assert seqproc.notifications("user:7", after=kept[-1].cursor, timeout_s=0) == []


def test_a_bad_topic_is_refused_at_the_call(clean: Settings) -> None:
    with pytest.raises(InvalidEvent, match="notify"):
        producer.like(1, 1, notify="no colon")
    with pytest.raises(InvalidEvent, match="notify_on"):
        producer.like(1, 1, notify_on="rejected")
    with pytest.raises(InvalidEvent, match="notify_on"):
        producer.like(1, 1, notify="user:1", notify_on="applied")  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent, match="notify"):
        seqproc.notifications("bad")


def test_a_worker_killed_between_commit_and_publish_still_notifies_once(
    clean: Settings, start_worker, engine: Engine
) -> None:
    """The worker dies right after its commit, before publishing outcomes and notifications: the redelivered
    events are duplicates, and their first outcomes are notified then, once each; the index entries go with the
    ack."""
    stream = [
        {"type": "restock", "product_id": 8, "quantity": 1},
        *({"type": "reserve", "product_id": 8, "quantity": 1, "reservation_id": f"k{n}"} for n in range(4)),
    ]
    receipts = seqproc.send_many(stream, notify="user:8")
    # Not waited on as ready: with the events already queued, it may commit and die before it says so.
    dying = start_worker(clean, ready=False, SEQPROC_FAULT_EXIT_AFTER_COMMITS="1")
    wait_for(lambda: dying.process.poll() is not None, 30, "the worker to die after its commit")
    assert seqproc.notifications("user:8", timeout_s=0) == []  # committed, nothing published yet
    start_worker(clean)
    outcomes = seqproc.wait_all(receipts, timeout_s=60)
    assert {o.status for o in outcomes} == {"duplicate"}
    told = read_all("user:8", len(stream))
    assert Counter((n.type, n.status) for n in told) == {
        ("restock", "applied"): 1,
        ("reserve", "applied"): 1,
        ("reserve", "rejected"): 3,
    }
    assert len({n.idempotency_key for n in told}) == len(told) == len(stream)
    broker = redis.Redis.from_url(clean.broker_url)
    wait_for(
        lambda: broker.exists(index_of("product:8", clean.partitions)) == 0, 10, "the ack to empty the pending index"
    )
