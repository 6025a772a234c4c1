"""The outbox calls for Django: the calls of :mod:`seqproc.outbox`, written through Django's connection.

    from django.db import transaction
    from seqproc.contrib.django import outbox

    with transaction.atomic():
        order = Order.objects.create(...)
        receipt = outbox.reserve(order.product_id, order.quantity, reservation_id=order.reservation_id)
    outcome = receipt.wait(timeout_s=5)  # once the block has committed

Each call inserts its event into the outbox table (``seqproc_outbox``) of the database ``using`` names
(``"default"`` unless told), through the connection Django uses for it in this thread, so the event belongs to the
current ``atomic`` block: it is sent (by ``seqproc relay``) if and only if that block commits, and a savepoint
rolled back takes its events with it. Outside ``atomic`` (Django's autocommit, which would commit the event at once,
whatever became of the view's other writes) a call raises :class:`~seqproc.outbox.OutboxConnectionError`;
``ATOMIC_REQUESTS`` and ``transaction.set_autocommit(False)`` are transactions too.

The outbox table must be in that database: ``SEQPROC_OUTBOX_DATABASE_URL=<it> seqproc migrate`` creates it, and
``seqproc relay`` reads it with the same ``SEQPROC_OUTBOX_DATABASE_URL``. Validation is that of every other call:
a bad value raises :class:`~seqproc.InvalidEvent` naming the field, and nothing is written. A ``SEQPROC_PARTITIONS``
(or ``SEQPROC["PARTITIONS"]``) other than the deployment's raises :class:`~seqproc.models.errors.PartitionCountMismatch`
and writes nothing: the insert checks it (see :mod:`seqproc.producer.outbox`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections

from seqproc.models.domain import EventModel
from seqproc.models.events import Event
from seqproc.producer.api import current_settings
from seqproc.producer.build import (
    build_events,
    commit_event,
    like_event,
    prepare,
    release_event,
    reserve_event,
    restock_event,
    unlike_event,
)
from seqproc.producer.outbox import (
    INSERT_PYFORMAT,
    RECORDED_COUNT,
    OutboxConnectionError,
    count_refused,
    outbox_rows,
    receipts_for,
)
from seqproc.producer.receipt import Receipt

__all__ = ["commit", "like", "release", "reserve", "restock", "send_many", "unlike", "write"]


def like(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, using: str = DEFAULT_DB_ALIAS
) -> Receipt:
    """``user_id`` likes ``article_id``, if and only if the current transaction on ``using`` commits."""
    return write([like_event(article_id, user_id, idempotency_key=idempotency_key)], using=using)[0]


def unlike(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, using: str = DEFAULT_DB_ALIAS
) -> Receipt:
    """``user_id`` takes back their like of ``article_id``, if and only if the transaction commits."""
    return write([unlike_event(article_id, user_id, idempotency_key=idempotency_key)], using=using)[0]


def reserve(product_id: int, quantity: int, *, reservation_id: str, using: str = DEFAULT_DB_ALIAS) -> Receipt:
    """Hold ``quantity`` units of ``product_id``, if and only if the transaction commits."""
    return write([reserve_event(product_id, quantity, reservation_id=reservation_id)], using=using)[0]


def release(product_id: int, reservation_id: str, *, using: str = DEFAULT_DB_ALIAS) -> Receipt:
    """Give a reservation's units back, if and only if the transaction commits."""
    return write([release_event(product_id, reservation_id)], using=using)[0]


def commit(product_id: int, reservation_id: str, *, using: str = DEFAULT_DB_ALIAS) -> Receipt:
    """Turn an applied reservation into a sale, if and only if the transaction commits."""
    return write([commit_event(product_id, reservation_id)], using=using)[0]


def restock(
    product_id: int, quantity: int, *, idempotency_key: str | None = None, using: str = DEFAULT_DB_ALIAS
) -> Receipt:
    """Add ``quantity`` units of ``product_id``, if and only if the transaction commits."""
    return write([restock_event(product_id, quantity, idempotency_key=idempotency_key)], using=using)[0]


def send(event: EventModel, *, idempotency_key: str | None = None, using: str = DEFAULT_DB_ALIAS) -> Receipt:
    """An event of any domain, if and only if the current transaction of ``using`` commits."""
    return write(prepare([event], idempotency_keys=[idempotency_key]), using=using)[0]


def send_many(events: Iterable[Mapping[str, Any] | EventModel], *, using: str = DEFAULT_DB_ALIAS) -> list[Receipt]:
    """Many events in one statement, each a mapping as :func:`seqproc.send_many` takes them; all are validated
    before any is written (the first bad one raises :class:`~seqproc.InvalidEvent` naming its index and field)."""
    return write(build_events(events), using=using)


def write(events: Sequence[Event], *, using: str = DEFAULT_DB_ALIAS) -> list[Receipt]:
    """Insert built ``events`` into the outbox of ``using``, in its current transaction; one receipt per event."""
    if not events:
        return []
    connection = connections[using]
    if connection.get_autocommit() and not connection.in_atomic_block:
        raise OutboxConnectionError(
            f"using={using!r}: must be inside transaction.atomic(using={using!r}): in autocommit mode the event "
            "would be committed on its own, whether the rest of the view's writes commit or not"
        )
    settings = current_settings()
    rows = outbox_rows(events, settings.partitions)
    # Django's cursor, not a connection of our own: only its connection is inside the caller's transaction.
    with connection.cursor() as cursor:
        if len(rows) == 1:
            cursor.execute(INSERT_PYFORMAT, rows[0])
        else:
            cursor.executemany(INSERT_PYFORMAT, rows)
        if cursor.rowcount != len(rows):  # the outbox database records another partition count: nothing written
            cursor.execute(RECORDED_COUNT)
            row = cursor.fetchone()
            raise count_refused(rows, None if row is None else row[0])
    return receipts_for(events, rows, settings)
