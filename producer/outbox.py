"""The transactional outbox: enqueue inside the caller's own database transaction.

    with engine.begin() as conn:                      # or a Session, or a psycopg Connection
        conn.execute(insert(orders).values(...))      # the application's own writes
        receipt = seqproc.outbox.like(conn, article_id, user_id)
    outcome = receipt.wait(timeout_s=5)               # once the transaction has committed

Each call (:class:`~seqproc.producer.calls.Calls` over :class:`OutboxSender`) validates exactly as the direct calls
do (:class:`InvalidEvent` naming the field; nothing is written then), and inserts the event into the outbox table
(``seqproc_outbox``) through the caller's connection, so the event is committed if and only if the caller's
transaction commits. ``seqproc relay`` sends committed events to their partition queues, many per message, and keeps
each row until the worker has applied its event. No broker is contacted here: a call needs only the database.

The insert itself checks the partition count the rows were routed with against the deployment's, as the outbox
database records it (``seqproc_outbox_meta``, copied from seqproc's database by ``seqproc migrate``, the relays and
``seqproc partitions set``): a writer with another ``SEQPROC_PARTITIONS`` inserts nothing and raises
:class:`PartitionCountMismatch`, and the caller's transaction is left as it was. One statement, no cache: no round
trip is added, and a ``seqproc partitions set`` is seen by the very next insert.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Never, cast

from seqproc.models.errors import PartitionCountMismatch, SeqprocError
from seqproc.models.events import Event
from seqproc.models.outcomes import OutcomeStore, outcome_store
from seqproc.models.partition_count import mismatch
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for
from seqproc.producer.api import current_settings
from seqproc.producer.calls import Calls, SendOptions
from seqproc.producer.fronts import PerConnection
from seqproc.producer.receipt import Receipt

__all__ = ["OutboxConnectionError", "write"]
# The calls (producer.calls.CALLS): every front exports the same list.
__all__ += ["commit", "like", "release", "reserve", "restock", "send", "send_many", "unlike"]

#: The insert, with psycopg's (and Django's) placeholders: nothing is inserted unless the outbox database records no
#: partition count or the one the row was routed with (``partitions``). Constant text: psycopg prepares it after a
#: few uses.
INSERT_PYFORMAT = (
    "INSERT INTO seqproc_outbox (partition, ledger_key, event_id, body) "
    "SELECT %(partition)s, %(ledger_key)s, %(event_id)s, %(body)s WHERE NOT EXISTS "
    "(SELECT 1 FROM seqproc_outbox_meta WHERE name = 'partition_count' AND value <> %(partitions)s)"
)
#: The same, with SQLAlchemy's named placeholders (``text()``).
INSERT_NAMED = (
    "INSERT INTO seqproc_outbox (partition, ledger_key, event_id, body) "
    "SELECT :partition, :ledger_key, :event_id, :body WHERE NOT EXISTS "
    "(SELECT 1 FROM seqproc_outbox_meta WHERE name = 'partition_count' AND value <> :partitions)"
)
#: The outbox database's partition count: read only to word the error of an insert that the count refused.
RECORDED_COUNT = "SELECT value FROM seqproc_outbox_meta WHERE name = 'partition_count'"


class OutboxConnectionError(SeqprocError, TypeError):
    """The connection given to an outbox call is not one it can write through."""


#: psycopg's ``pq.TransactionStatus.IDLE``: no transaction open (a number here: psycopg is imported only when used).
_PSYCOPG_IDLE = 0
#: Why an autocommit connection is refused.
AUTOCOMMIT_REFUSED = (
    "conn: must be inside a transaction, not in autocommit mode: each statement would commit on its own, so the "
    "event would be sent whether the rest of your transaction commits or not (use the Connection of "
    "engine.begin() or a Session's transaction; with psycopg, autocommit off or inside `with conn.transaction():`)"
)


def refuse_autocommit(driver_connection: Any, isolation_level: object = None) -> None:
    """Raise :class:`OutboxConnectionError` when the connection commits each statement on its own: a SQLAlchemy
    ``isolation_level`` of ``AUTOCOMMIT``, or a driver connection in autocommit mode outside a transaction block
    of its own (psycopg's ``conn.transaction()`` opens one: that is a transaction)."""
    if isolation_level == "AUTOCOMMIT":
        raise OutboxConnectionError(AUTOCOMMIT_REFUSED)
    if getattr(driver_connection, "autocommit", False) is not True:
        return
    status = getattr(getattr(driver_connection, "info", None), "transaction_status", None)
    if status is None or status == _PSYCOPG_IDLE:
        raise OutboxConnectionError(AUTOCOMMIT_REFUSED)


def refuse_sqlalchemy_autocommit(connection: Any) -> None:
    """:func:`refuse_autocommit` for a SQLAlchemy ``Connection`` (an ``AsyncConnection``'s ``sync_connection``)."""
    refuse_autocommit(
        connection.connection.driver_connection, connection.get_execution_options().get("isolation_level")
    )


class OutboxSender:
    """The outbox table, through the caller's connection, inside its transaction (see :func:`write`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def one(self, event: Event, options: SendOptions[Never, Never]) -> Receipt:
        return write(self.conn, [event])[0]

    def many(self, events: list[Event], options: SendOptions[Never, Never]) -> list[Receipt]:
        return write(self.conn, events) if events else []


#: What an outbox call's docstring says of sending.
SENT = "Written into the outbox through ``conn``, inside its transaction: sent if and only if it commits."

_front = PerConnection(OutboxSender, __name__, sent=SENT)
like, unlike = _front.export(Calls.like), _front.export(Calls.unlike)
restock, reserve = _front.export(Calls.restock), _front.export(Calls.reserve)
release, commit = _front.export(Calls.release), _front.export(Calls.commit)
send, send_many = _front.export(Calls.send), _front.export(Calls.send_many)


def write(conn: Any, events: Sequence[Event], *, settings: Settings | None = None) -> list[Receipt]:
    """Insert ``events`` into the outbox through ``conn``, inside its transaction; one receipt per event.

    ``conn``: a SQLAlchemy ``Connection`` or ``Session``, or a psycopg 3 ``Connection`` (the async ones go through
    ``seqproc.aio.outbox``; Django's through ``seqproc.contrib.django.outbox``).
    """
    if not events:
        return []
    settings = settings or current_settings()
    rows = outbox_rows(events, settings.partitions)
    _insert(conn, rows)
    return receipts_for(events, rows, settings)


def outbox_rows(events: Sequence[Event], partitions: int) -> list[dict[str, Any]]:
    """The outbox rows of ``events``: partition, ledger key, event id and the event in wire form, and the partition
    count they were routed with (checked by the insert)."""
    count = str(partitions)
    return [
        {
            "partition": partition_for(event.entity_key, partitions),
            "ledger_key": event.ledger_key,
            "event_id": event.id,
            "body": event.model_dump_json(),
            "partitions": count,
        }
        for event in events
    ]


def count_refused(rows: Sequence[Mapping[str, Any]], recorded: object) -> PartitionCountMismatch:
    """The error of an insert of ``rows`` that wrote fewer: the outbox database records another partition count
    (``recorded``, read through the caller's connection only then)."""
    where = "the deployment (as the outbox database records it)"
    return mismatch(int(rows[0]["partitions"]), str(recorded), where=where)


def receipts_for(events: Sequence[Event], rows: Sequence[Mapping[str, Any]], settings: Settings) -> list[Receipt]:
    store = _outcomes(settings.result_backend, settings.outcome_ttl_s, settings.sentinel_master)
    return [Receipt.of(event, row["partition"], store) for event, row in zip(events, rows, strict=True)]


def _scalar(row: Any) -> object:
    return None if row is None else row[0]


@functools.cache
def _outcomes(url: str, ttl_s: int, sentinel_master: str) -> OutcomeStore:
    return outcome_store(url, ttl_s=ttl_s, sentinel_master=sentinel_master)


def _insert(conn: Any, rows: list[dict[str, Any]]) -> None:
    """One statement through the caller's connection (several rows: one executemany).

    A library is imported here only if the caller's connection can be one of its: a connection of a library not
    imported yet cannot exist (and a forked web server process that writes through psycopg must not pay
    SQLAlchemy's import, ~0.15 s and more under load, at its first request)."""
    psycopg = sys.modules.get("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.Connection):
        refuse_autocommit(conn)
        with conn.cursor() as cursor:
            if len(rows) == 1:
                cursor.execute(INSERT_PYFORMAT, rows[0])
            else:
                cursor.executemany(INSERT_PYFORMAT, rows)
            if cursor.rowcount != len(rows):
                raise count_refused(rows, _scalar(cursor.execute(RECORDED_COUNT).fetchone()))
        return
    if "sqlalchemy" not in sys.modules:
        raise _not_a_connection(conn)
    from sqlalchemy import Connection, CursorResult, Engine, text
    from sqlalchemy.orm import Session

    if isinstance(conn, Connection | Session):
        refuse_sqlalchemy_autocommit(conn.connection() if isinstance(conn, Session) else conn)
        inserted = cast("CursorResult[Any]", conn.execute(text(INSERT_NAMED), rows if len(rows) > 1 else rows[0]))
        if inserted.rowcount != len(rows):
            raise count_refused(rows, conn.execute(text(RECORDED_COUNT)).scalar())
        return
    if isinstance(conn, Engine):
        raise OutboxConnectionError(
            "conn: must be the Connection of your transaction (engine.begin() as conn), not an Engine: an event "
            "written outside your transaction would be sent whether it commits or not"
        )
    raise _not_a_connection(conn)


def _not_a_connection(conn: Any) -> OutboxConnectionError:
    return OutboxConnectionError(
        "conn: must be a SQLAlchemy Connection or Session, or a psycopg 3 Connection "
        f"(got {type(conn).__module__}.{type(conn).__qualname__}); async ones go through seqproc.aio.outbox, "
        "Django's through seqproc.contrib.django.outbox"
    )
