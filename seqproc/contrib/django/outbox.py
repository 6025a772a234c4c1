"""The outbox calls for Django: the calls of :mod:`seqproc.outbox`, written through Django's connection
(:class:`~seqproc.producer.calls.Calls` over :class:`DjangoSender`).

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

import inspect
from collections.abc import Sequence
from typing import Never

from django.db import DEFAULT_DB_ALIAS, connections

from seqproc.models.events import Event
from seqproc.producer.api import current_settings
from seqproc.producer.calls import Calls, SendOptions
from seqproc.producer.fronts import Front
from seqproc.producer.outbox import (
    INSERT_PYFORMAT,
    RECORDED_COUNT,
    OutboxConnectionError,
    count_refused,
    outbox_rows,
    receipts_for,
)
from seqproc.producer.receipt import Receipt

__all__ = ["commit", "like", "release", "reserve", "restock", "send", "send_many", "unlike", "write"]


class DjangoSender:
    """The outbox table of a Django database alias, inside its current transaction (see :func:`write`)."""

    def one(self, event: Event, options: SendOptions[Never, str]) -> Receipt:
        return write([event], using=options.get("using", DEFAULT_DB_ALIAS))[0]

    def many(self, events: list[Event], options: SendOptions[Never, str]) -> list[Receipt]:
        return write(events, using=options.get("using", DEFAULT_DB_ALIAS))


_front = Front(
    Calls(DjangoSender()),
    __name__,
    option=inspect.Parameter("using", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_DB_ALIAS, annotation=str),
    sent="Written into the outbox of the database ``using`` names, inside its current ``atomic`` block: sent if and "
    "only if that block commits.",
)
like, unlike = _front.export(Calls.like), _front.export(Calls.unlike)
restock, reserve = _front.export(Calls.restock), _front.export(Calls.reserve)
release, commit = _front.export(Calls.release), _front.export(Calls.commit)
send, send_many = _front.export(Calls.send), _front.export(Calls.send_many)


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
