"""The transactional outbox for asyncio code: enqueue inside the caller's own asynchronous database transaction.

    async with engine.begin() as conn:                     # or an AsyncSession, or a psycopg AsyncConnection
        await conn.execute(insert(orders).values(...))     # the application's own writes
        receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)
    outcome = await seqproc.aio.wait(receipt, timeout_s=5)  # once the transaction has committed

The calls of :mod:`seqproc.producer.outbox`, awaited (:class:`~seqproc.producer.calls.Calls` over
:class:`AsyncOutboxSender`): the same validation (:class:`InvalidEvent` naming the field; nothing is written then),
the same rows in the same table, inserted through the caller's connection so that the event is committed if and only
if the caller's transaction commits; ``seqproc relay`` sends it. No broker is contacted here. The insert checks the
partition count as the blocking one does (:class:`PartitionCountMismatch`, nothing inserted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Never, cast

from seqproc.models.events import Event
from seqproc.models.settings import Settings
from seqproc.producer.api import current_settings
from seqproc.producer.calls import Calls, SendOptions
from seqproc.producer.fronts import PerConnection
from seqproc.producer.outbox import (
    INSERT_NAMED,
    INSERT_PYFORMAT,
    RECORDED_COUNT,
    SENT,
    OutboxConnectionError,
    count_refused,
    outbox_rows,
    receipts_for,
    refuse_autocommit,
    refuse_sqlalchemy_autocommit,
)
from seqproc.producer.receipt import Receipt

__all__ = ["OutboxConnectionError", "write"]
# The calls (producer.calls.CALLS): every front exports the same list.
__all__ += ["commit", "like", "release", "reserve", "restock", "send", "send_many", "unlike"]


class AsyncOutboxSender:
    """The outbox table, through the caller's asynchronous connection, inside its transaction (see :func:`write`)."""

    __slots__ = ("conn",)

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    async def one(self, event: Event, options: SendOptions[Never, Never]) -> Receipt:
        return (await write(self.conn, [event]))[0]

    async def many(self, events: list[Event], options: SendOptions[Never, Never]) -> list[Receipt]:
        return await write(self.conn, events) if events else []


_front = PerConnection(AsyncOutboxSender, __name__, sent=f"Awaited. {SENT}", asynchronous=True)
like, unlike = _front.export(Calls.like), _front.export(Calls.unlike)
restock, reserve = _front.export(Calls.restock), _front.export(Calls.reserve)
release, commit = _front.export(Calls.release), _front.export(Calls.commit)
send, send_many = _front.export(Calls.send), _front.export(Calls.send_many)


async def write(conn: Any, events: Sequence[Event], *, settings: Settings | None = None) -> list[Receipt]:
    """Insert ``events`` into the outbox through ``conn``, inside its transaction; one receipt per event.

    ``conn``: a SQLAlchemy ``AsyncConnection`` or ``AsyncSession``, or a psycopg 3 ``AsyncConnection`` (the
    blocking ones go through ``seqproc.outbox``).
    """
    if not events:
        return []
    settings = settings or current_settings()
    rows = outbox_rows(events, settings.partitions)
    await _insert(conn, rows)
    return receipts_for(events, rows, settings)


async def _insert(conn: Any, rows: list[dict[str, Any]]) -> None:
    """One statement through the caller's connection (several rows: one executemany)."""
    import psycopg

    if isinstance(conn, psycopg.AsyncConnection):
        refuse_autocommit(conn)
        async with conn.cursor() as cursor:
            if len(rows) == 1:
                await cursor.execute(INSERT_PYFORMAT, rows[0])
            else:
                await cursor.executemany(INSERT_PYFORMAT, rows)
            if cursor.rowcount != len(rows):
                row = await (await cursor.execute(RECORDED_COUNT)).fetchone()
                raise count_refused(rows, None if row is None else row[0])
        return
    from sqlalchemy import CursorResult, text
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

    if isinstance(conn, AsyncConnection | AsyncSession):
        bound = await conn.connection() if isinstance(conn, AsyncSession) else conn
        if bound.sync_connection is not None:  # None: not started, and the insert below says so
            refuse_sqlalchemy_autocommit(bound.sync_connection)
        inserted = cast("CursorResult[Any]", await conn.execute(text(INSERT_NAMED), rows if len(rows) > 1 else rows[0]))
        if inserted.rowcount != len(rows):
            raise count_refused(rows, (await conn.execute(text(RECORDED_COUNT))).scalar())
        return
    if isinstance(conn, AsyncEngine):
        raise OutboxConnectionError(
            "conn: must be the AsyncConnection of your transaction (async with engine.begin() as conn), not an "
            "AsyncEngine: an event written outside your transaction would be sent whether it commits or not"
        )
    raise OutboxConnectionError(
        "conn: must be a SQLAlchemy AsyncConnection or AsyncSession, or a psycopg 3 AsyncConnection "
        f"(got {type(conn).__module__}.{type(conn).__qualname__}); blocking ones go through seqproc.outbox"
    )
