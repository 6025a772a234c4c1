"""Event types nobody declared. A producer refuses them before anything is sent (``InvalidEvent`` naming ``type``);
a worker that receives one (pushed straight onto a queue, or sent by a producer that knows a domain the worker was
not given in ``SEQPROC_DOMAINS``) stores it in ``dead_letter`` with its body and the reason, and goes on: never
dropped, never applied."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import Engine, func, select, text

import seqproc
import seqproc.aio
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.ops.inspect import article_state
from tests import domains_fixture as fixture
from tests.conftest import WorkerProcess, publish_raw, wait_for

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]


class Undeclared(seqproc.EventModel):
    """An event class that no ``@domain.event`` registered."""

    account_id: int


def test_a_producer_refuses_an_unknown_type_and_sends_nothing(clean: Settings, engine: Engine) -> None:
    with pytest.raises(seqproc.InvalidEvent) as direct:
        seqproc.send(Undeclared(account_id=7), idempotency_key="req-1")
    assert direct.value.field == "type"
    assert "Undeclared is not a registered event" in str(direct.value)

    with pytest.raises(seqproc.InvalidEvent) as by_name:
        seqproc.send_many([{"type": "like", "article_id": 1, "user_id": 2}, {"type": "wallet.nosuch", "account_id": 7}])
    assert by_name.value.field == "events[1].type"
    assert "must be one of " in str(by_name.value)  # the known public types, to pick from
    assert "like, unlike" in str(by_name.value)
    assert str(by_name.value).endswith("(got 'wallet.nosuch')")

    with pytest.raises(seqproc.InvalidEvent) as from_asyncio:
        asyncio.run(seqproc.aio.send(Undeclared(account_id=7)))
    assert from_asyncio.value.field == "type"

    with pytest.raises(seqproc.InvalidEvent) as in_transaction, engine.begin() as conn:
        seqproc.outbox.send(conn, Undeclared(account_id=7))
    assert in_transaction.value.field == "type"

    # Nothing reached the broker (the valid like before the bad item neither) or the outbox.
    assert redis.Redis.from_url(clean.broker_url).keys("seqproc.p*") == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM seqproc_outbox")).scalar_one() == 0


def test_a_worker_dead_letters_types_it_does_not_know(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    # The worker is not given SEQPROC_DOMAINS=tests.domains_fixture: "tally.add" is unknown to it.
    worker = start_worker(clean)
    tally = fixture.Add(tally_id=1, amount=5, label="t1")
    partition = partition_for(tally.entity_key, clean.partitions)
    article = next(a for a in range(1, 10_000) if partition_for(article_key(a), clean.partitions) == partition)
    base = {"key": "k-1", "id": "id-1", "stamp": 1}
    raw_events = [
        {**base, "type": "tally.add", "tally_id": 1, "amount": 5, "label": "raw"},
        {**base, "key": "k-2", "id": "id-2", "type": "nosuch.type", "anything": True},
        {**base, "key": "k-3", "id": "id-3", "type": "like", "article_id": article, "user_id": 1},  # known: applied
    ]
    publish_raw(
        clean,
        queue_name(partition),
        json.dumps([[], {"events": raw_events}, {}]),
        "application/json",
        {"task": "seqproc.apply", "id": "raw-1", "lang": "py"},
    )
    # A producer that knows the domain, sending to a worker that does not.
    sent = seqproc.send(tally, idempotency_key="t1")

    with engine.connect() as conn:
        wait_for(
            lambda: conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one() >= 3,
            30,
            "three dead letters",
        )
        conn.rollback()
        letters = conn.execute(select(DeadLetter.event_key, DeadLetter.error, DeadLetter.body).order_by(DeadLetter.id))
        stored = {row.event_key: row for row in letters}
        assert sorted(stored) == ["k-1", "k-2", "t1"]
        for key, row in stored.items():
            assert row.error.startswith("invalid event: type: must be one of like"), row.error
            assert json.loads(row.body)["key"] == key  # the event as received, to act on
        assert json.loads(stored["t1"].body)["id"] == sent.event_id
        assert "'tally.add'" in stored["t1"].error
        wait_for(lambda: article_state(conn, article)["like_count"] == 1, 30, "the known event of the message")
        ledger = conn.execute(text("SELECT key FROM idempotency_ledger")).scalars().all()
    assert ledger == ["like:k-3"]  # nothing of the unknown types was applied or claimed
    assert worker.process.poll() is None


def test_a_worker_that_cannot_import_its_domains_takes_no_partition(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A misconfigured worker (SEQPROC_DOMAINS names a module it cannot import) stops with a configuration error
    naming the module, before it claims anything: the running owner of the partitions keeps them."""
    start_worker(clean, "0-15")
    with engine.connect() as conn:
        epochs = conn.execute(text("SELECT partition, epoch, owner FROM partition ORDER BY partition")).all()
    broken = start_worker(clean, "0-15", ready=False, SEQPROC_DOMAINS="examples.no_such_module")
    assert broken.process.wait(30) == 3  # RET_CONFIG
    assert "SEQPROC_DOMAINS: cannot import 'examples.no_such_module'" in broken.log()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT partition, epoch, owner FROM partition ORDER BY partition")).all() == epochs
    assert seqproc.like(1, 1).wait(30).status == "applied"
