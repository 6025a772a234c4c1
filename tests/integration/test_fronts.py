"""A new event type and a new named call, each declared once, go through every way of sending: the broker, the
outbox of a SQLAlchemy or psycopg connection, a Django alias, and the asyncio forms, on the real Redis and
PostgreSQL. The event type is this module's own (a schema and nothing else); the call is one method of a
``Calls`` subclass, exported by each front's own machinery with that front's signature."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, Unpack

import psycopg
import pytest
import redis
from pydantic import PositiveInt
from sqlalchemy import Engine, text
from sqlalchemy.ext.asyncio import create_async_engine

import seqproc
import seqproc.aio
import seqproc.aio.outbox
import seqproc.outbox
from seqproc.models.settings import Settings
from seqproc.producer import api, outbox
from seqproc.producer.aio import api as aio_api
from seqproc.producer.aio import outbox as aio_outbox
from seqproc.producer.build import make_event
from seqproc.producer.calls import Calls, Many, One, SendOptions, T, U
from tests.integration.django_example import SHOP_DATABASE_URL
from tests.integration.test_django_contrib import django_project, outbox_keys, shop  # noqa: F401 (fixtures)

pytestmark = [pytest.mark.services, pytest.mark.timeout(120), pytest.mark.usefixtures("shop")]

pytest.importorskip("django")

counters = seqproc.Domain("fronts_counter", key="counter_id")
BUMP = "fronts_counter.bump"


@counters.event("bump")
class Bump(seqproc.EventModel):
    """Add ``by`` to a counter."""

    counter_id: PositiveInt
    by: PositiveInt


class WithBump(Calls[T, U, One, Many]):
    """The calls plus one, written as the built-in ones are."""

    def bump(
        self, counter_id: int, by: int, *, idempotency_key: str | None = None, **options: Unpack[SendOptions[T, U]]
    ) -> One:
        """Add ``by`` to ``counter_id``."""
        fields = {"counter_id": counter_id, "by": by}
        return self.sender.one(make_event(BUMP, fields, idempotency_key=idempotency_key), options)


def signature_of(function: Any) -> str:
    return str(inspect.signature(function)).split(" -> ")[0]


def queued(client: redis.Redis, receipt: seqproc.Receipt) -> bool:
    """The broker holds ``receipt``'s event (in one of its queue's messages)."""
    return any(receipt.event_id.encode() in body for body in client.lrange(receipt.queue, 0, -1))


def written(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(text("SELECT ledger_key FROM seqproc_outbox ORDER BY id")).scalars())


def test_a_new_event_type_and_call_go_through_every_front(clean: Settings, engine: Engine) -> None:
    from django.db import transaction

    from seqproc.contrib.django import outbox as django_outbox

    bump = api._front.export(WithBump.bump)
    bump_outbox = outbox._front.export(WithBump.bump)
    bump_aio = aio_api._front.export(WithBump.bump)
    bump_aio_outbox = aio_outbox._front.export(WithBump.bump)
    bump_django = django_outbox._front.export(WithBump.bump)
    assert (
        signature_of(bump)
        == "(counter_id: int, by: int, *, idempotency_key: str | None = None, timeout_s: float | None = None)"
    )
    assert signature_of(bump_aio) == signature_of(bump)
    assert signature_of(bump_outbox) == "(conn: Any, counter_id: int, by: int, *, idempotency_key: str | None = None)"
    assert signature_of(bump_aio_outbox) == signature_of(bump_outbox)
    assert (
        signature_of(bump_django)
        == "(counter_id: int, by: int, *, idempotency_key: str | None = None, using: str = 'default')"
    )

    # The broker, and its asyncio form.
    broker = redis.Redis.from_url(clean.broker_url)
    direct = [
        bump(1, 2, idempotency_key="direct", timeout_s=5),
        seqproc.send(Bump(counter_id=1, by=3)),
        *seqproc.send_many([{"type": BUMP, "counter_id": 1, "by": 4}]),
    ]

    async def awaited() -> list[seqproc.Receipt]:
        return [
            await bump_aio(2, 2, idempotency_key="aio", timeout_s=5),
            await seqproc.aio.send(Bump(counter_id=2, by=3)),
            *await seqproc.aio.send_many([{"type": BUMP, "counter_id": 2, "by": 4}]),
        ]

    direct += asyncio.run(awaited())
    assert all(receipt.event_type == BUMP for receipt in direct)
    assert all(queued(broker, receipt) for receipt in direct)
    assert direct[0].idempotency_key == "direct"

    # The outbox, through a SQLAlchemy Connection, a psycopg Connection and their asyncio forms.
    with engine.begin() as conn:
        in_outbox = [bump_outbox(conn, 3, 1)]
        in_outbox.append(seqproc.outbox.send(conn, Bump(counter_id=3, by=2)))
    psycopg_url = clean.outbox_url.replace("+psycopg", "")
    with psycopg.connect(psycopg_url) as conn:
        in_outbox += seqproc.outbox.send_many(conn, [{"type": BUMP, "counter_id": 3, "by": 3}])

    async def written_async() -> list[seqproc.Receipt]:
        async_engine = create_async_engine(clean.outbox_url)
        try:
            async with async_engine.begin() as conn:
                receipts = [
                    await bump_aio_outbox(conn, 4, 1, idempotency_key="aio-outbox"),
                    await seqproc.aio.outbox.send(conn, Bump(counter_id=4, by=2)),
                ]
        finally:
            await async_engine.dispose()
        async with await psycopg.AsyncConnection.connect(psycopg_url) as conn:
            receipts += await seqproc.aio.outbox.send_many(conn, [{"type": BUMP, "counter_id": 4, "by": 3}])
        return receipts

    in_outbox += asyncio.run(written_async())
    assert written(engine) == [f"{BUMP}:{receipt.idempotency_key}" for receipt in in_outbox]

    # A Django alias, in its atomic block.
    with transaction.atomic():
        in_django = [
            bump_django(5, 1, idempotency_key="django"),
            django_outbox.send(Bump(counter_id=5, by=2)),
            *django_outbox.send_many([{"type": BUMP, "counter_id": 5, "by": 3}]),
        ]
    assert outbox_keys(SHOP_DATABASE_URL) == [f"{BUMP}:{receipt.idempotency_key}" for receipt in in_django]
