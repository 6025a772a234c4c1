"""An event a worker dead-letters on arrival (a type it does not know, a partition it does not belong to, a field that
fails the schema) gets its outcome at once, once the dead letter is committed: ``rejected`` with reason
``dead_lettered`` and the letter's error, to ``receipt.wait()`` and ``seqproc.aio.wait`` alike, instead of a wait
that runs out its whole timeout. Real worker processes, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, func, select

import seqproc
import seqproc.aio
from seqproc.models.outcomes import outcome_store
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import DeadLetter
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.producer.receipt import Receipt
from tests import domains_fixture as fixture
from tests.conftest import WorkerProcess, publish_raw

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

#: How soon the outcome must come: the worker's batch interval and a commit, with room for a loaded machine. Without
#: the outcome, wait() would run out its whole timeout (WAIT_S) and raise.
PROMPT_S = 3.0
WAIT_S = 15.0


def timed(wait: Callable[[], seqproc.Outcome]) -> tuple[seqproc.Outcome, float]:
    started = time.monotonic()
    outcome = wait()
    return outcome, time.monotonic() - started


def raw_like(settings: Settings, queue: str, event: dict[str, object]) -> Receipt:
    """Push one like in wire form onto ``queue`` as any client could; the receipt a producer would have made."""
    publish_raw(
        settings,
        queue,
        json.dumps([[], {"events": [event]}, {}]),
        "application/json",
        {"task": "seqproc.apply", "id": f"raw-{event['id']}", "lang": "py"},
    )
    return Receipt(
        idempotency_key=str(event["key"]),
        event_id=str(event["id"]),
        event_type="like",
        partition=int(queue.removeprefix("seqproc.p")),
        queue=queue,
        stamp=1,
        _store=outcome_store(settings.result_backend, ttl_s=settings.outcome_ttl_s),
    )


def test_an_unknown_type_is_reported_dead_lettered_at_once(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    # The worker is not given SEQPROC_DOMAINS=tests.domains_fixture; this producer knows the tally domain.
    start_worker(clean)
    sent = seqproc.send(fixture.Add(tally_id=1, amount=5, label="t1"), idempotency_key="t1")
    outcome, waited_s = timed(lambda: sent.wait(WAIT_S))
    assert (outcome.status, outcome.reason) == ("rejected", "dead_lettered")
    assert waited_s < PROMPT_S
    assert outcome.error is not None
    assert outcome.error.startswith("invalid event: type: must be one of like")
    assert outcome.error.endswith("(got 'tally.add')")

    # The same through seqproc.aio, and the outcome on the wire carries the error.
    async def send_and_wait() -> tuple[seqproc.Outcome, float]:
        receipt = await seqproc.aio.send(fixture.Add(tally_id=2, amount=1, label="t2"), idempotency_key="t2")
        started = time.monotonic()
        return await seqproc.aio.wait(receipt, timeout_s=WAIT_S), time.monotonic() - started

    from_asyncio, waited_s = asyncio.run(send_and_wait())
    assert (from_asyncio.status, from_asyncio.reason, from_asyncio.error) == (
        "rejected",
        "dead_lettered",
        outcome.error,
    )
    assert waited_s < PROMPT_S
    assert from_asyncio.to_wire() == {"status": "rejected", "reason": "dead_lettered", "error": outcome.error}

    # Each counted once: one dead letter per event, with the error the outcome quoted.
    with engine.connect() as conn:
        errors = conn.execute(select(DeadLetter.event_key, DeadLetter.error).order_by(DeadLetter.id)).all()
    assert [key for key, _ in errors] == ["t1", "t2"]
    assert all(error == outcome.error for _, error in errors)


def test_a_wrongly_routed_or_invalid_event_is_reported_dead_lettered_at_once(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(clean)
    # An article whose partition under 8 partitions is not its partition under the deployment's 16: what a producer
    # configured with SEQPROC_PARTITIONS=8 sends.
    article = next(
        a
        for a in range(1, 10_000)
        if partition_for(article_key(a), 8) != partition_for(article_key(a), clean.partitions)
    )
    elsewhere = queue_name(partition_for(article_key(article), 8))
    routed = raw_like(
        clean,
        elsewhere,
        {"type": "like", "key": "k-routed", "id": "id-routed", "stamp": 1, "article_id": article, "user_id": 1},
    )
    outcome, waited_s = timed(lambda: routed.wait(WAIT_S))
    assert (outcome.status, outcome.reason) == ("rejected", "dead_lettered")
    assert waited_s < PROMPT_S
    home = partition_for(article_key(article), clean.partitions)
    assert outcome.error == (
        f"{article_key(article)} belongs to partition {home}, not {routed.partition}: was it sent with another "
        "partition count?"
    )

    # A field that fails the schema, its id readable: the same.
    invalid = raw_like(
        clean,
        queue_name(home),
        {"type": "like", "key": "k-invalid", "id": "id-invalid", "stamp": 1, "article_id": article, "user_id": 0},
    )
    outcome, waited_s = timed(lambda: invalid.wait(WAIT_S))
    assert (outcome.status, outcome.reason) == ("rejected", "dead_lettered")
    assert waited_s < PROMPT_S
    assert outcome.error == "invalid event: user_id: must be >= 1 (got 0)"
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(DeadLetter)).scalar_one() == 2
