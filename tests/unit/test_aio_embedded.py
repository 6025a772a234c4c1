"""``seqproc.aio`` without services: on the memory transport a send runs the threaded publisher in a worker thread
and a wait the memory store's; validation and the outbox's connection checks happen before any I/O."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection

import seqproc
import seqproc.aio
from seqproc import producer
from seqproc.models.outcomes import Outcome, outcome_store
from seqproc.models.settings import Settings
from seqproc.producer.aio import publisher
from seqproc.producer.publish import publisher_for

SETTINGS = Settings(broker_url="memory://localhost/", result_backend="memory://", partitions=4, publish_timeout_s=1)


@pytest.fixture
def embedded() -> Iterator[Settings]:
    producer.configure(SETTINGS)
    yield SETTINGS
    producer.configure(None)


def drain(queue: str) -> list[dict[str, Any]]:
    """The apply-task messages waiting on ``queue`` of the in-process memory transport."""
    bodies = []
    with Connection(SETTINGS.broker_url) as conn:
        simple = conn.SimpleQueue(queue, no_ack=True)
        while True:
            try:
                message = simple.get(timeout=0.2)
            except simple.Empty:
                return bodies
            body = message.payload if not isinstance(message.payload, str | bytes) else json.loads(message.payload)
            bodies.append(body[1] if isinstance(body, list) else body)


def test_calls_on_the_memory_transport_go_through_the_threaded_publisher(embedded: Settings) -> None:
    threaded = publisher_for(embedded)
    before = threaded.sent_events

    async def main() -> tuple[list[seqproc.Receipt], int]:
        receipts = await asyncio.gather(*(seqproc.aio.like(7, user) for user in range(1, 21)))
        return receipts, (await publisher()).sent_events

    receipts, sent = asyncio.run(main())
    assert sent == 20
    assert threaded.sent_events - before == 20  # the threaded publisher sent them
    [queue] = {receipt.queue for receipt in receipts}
    events = [event for body in drain(queue) for event in body["events"]]
    assert [event["id"] for event in events] == [receipt.event_id for receipt in receipts]


def test_waits_read_the_memory_store_in_a_thread(embedded: Settings) -> None:
    async def main() -> None:
        receipts = await seqproc.aio.send_many([{"type": "restock", "product_id": 3, "quantity": n} for n in (1, 2)])
        store = outcome_store(embedded.result_backend, ttl_s=embedded.outcome_ttl_s)
        with pytest.raises(seqproc.OutcomeTimeout, match="no outcome for restock event"):
            await seqproc.aio.wait(receipts[0], timeout_s=0.05)
        store.put_many([(receipts[0].event_id, Outcome("applied"))])
        assert (await seqproc.aio.wait(receipts[0], timeout_s=1)).status == "applied"
        with pytest.raises(seqproc.OutcomeTimeout, match="1 of 2 events have no outcome"):
            await seqproc.aio.wait_all(receipts, timeout_s=0.05)
        store.put_many([(receipts[1].event_id, Outcome("rejected", "stale"))])
        outcomes = await seqproc.aio.wait_all(receipts, timeout_s=1)
        assert [(o.status, o.reason) for o in outcomes] == [("applied", None), ("rejected", "stale")]

    asyncio.run(main())


def test_a_bad_value_names_the_field_and_sends_nothing(embedded: Settings) -> None:
    async def main() -> int:
        with pytest.raises(seqproc.InvalidEvent, match=r"^article_id: ") as caught:
            await seqproc.aio.like(0, 1)
        assert caught.value.field == "article_id"
        with pytest.raises(seqproc.InvalidEvent, match=r"^quantity: must be >= 1 \(got 0\)"):
            await seqproc.aio.reserve(1, 0, reservation_id="r-1")
        with pytest.raises(seqproc.InvalidEvent, match=r"^events\[1\]\.user_id: "):
            await seqproc.aio.send_many(
                [{"type": "like", "article_id": 1, "user_id": 1}, {"type": "like", "article_id": 1}]
            )
        return (await publisher()).sent_events

    assert asyncio.run(main()) == 0


def test_the_async_outbox_refuses_what_is_not_a_transactions_connection(embedded: Settings) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    async def main() -> None:
        engine = create_async_engine("postgresql+psycopg://nobody@127.0.0.1:1/none")  # never connected
        with pytest.raises(seqproc.aio.outbox.OutboxConnectionError, match=r"not an AsyncEngine"):
            await seqproc.aio.outbox.like(engine, 1, 1)
        await engine.dispose()
        blocking = create_engine("sqlite://")
        with (
            blocking.connect() as conn,
            pytest.raises(seqproc.aio.outbox.OutboxConnectionError, match=r"blocking ones go through seqproc"),
        ):
            await seqproc.aio.outbox.like(conn, 1, 1)
        with pytest.raises(seqproc.InvalidEvent, match=r"^user_id: "):  # validation first, whatever the connection
            await seqproc.aio.outbox.like(object(), 1, -1)

    asyncio.run(main())
