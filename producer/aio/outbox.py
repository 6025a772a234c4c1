"""The transactional outbox for asyncio code: enqueue inside the caller's own asynchronous database transaction.

    async with engine.begin() as conn:                     # or an AsyncSession, or a psycopg AsyncConnection
        await conn.execute(insert(orders).values(...))     # the application's own writes
        receipt = await seqproc.aio.outbox.like(conn, article_id, user_id)
    outcome = await seqproc.aio.wait(receipt, timeout_s=5)  # once the transaction has committed

The calls of :mod:`seqproc.producer.outbox`, awaited: the same validation (:class:`InvalidEvent` naming the field;
nothing is written then), the same rows in the same table, inserted through the caller's connection so that the
event is committed if and only if the caller's transaction commits; ``seqproc relay`` sends it. No broker is
contacted here. The insert checks the partition count as the blocking one does (:class:`PartitionCountMismatch`,
nothing inserted).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from seqproc.models.domain import EventModel
from seqproc.models.events import Event
from seqproc.models.settings import Settings
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
    INSERT_NAMED,
    INSERT_PYFORMAT,
    RECORDED_COUNT,
    OutboxConnectionError,
    count_refused,
    outbox_rows,
    receipts_for,
    refuse_autocommit,
    refuse_sqlalchemy_autocommit,
)
from seqproc.producer.receipt import Receipt

__all__ = [
    "OutboxConnectionError",
    "commit",
    "like",
    "release",
    "reserve",
    "restock",
    "send_many",
    "unlike",
    "write",
]


async def like(conn: Any, article_id: int, user_id: int, *, idempotency_key: str | None = None) -> Receipt:
    """``user_id`` likes ``article_id``, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [like_event(article_id, user_id, idempotency_key=idempotency_key)]))[0]


async def unlike(conn: Any, article_id: int, user_id: int, *, idempotency_key: str | None = None) -> Receipt:
    """``user_id`` takes back their like of ``article_id``, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [unlike_event(article_id, user_id, idempotency_key=idempotency_key)]))[0]


async def reserve(conn: Any, product_id: int, quantity: int, *, reservation_id: str) -> Receipt:
    """Hold ``quantity`` units of ``product_id``, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [reserve_event(product_id, quantity, reservation_id=reservation_id)]))[0]


async def release(conn: Any, product_id: int, reservation_id: str) -> Receipt:
    """Give a reservation's units back, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [release_event(product_id, reservation_id)]))[0]


async def commit(conn: Any, product_id: int, reservation_id: str) -> Receipt:
    """Turn an applied reservation into a sale, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [commit_event(product_id, reservation_id)]))[0]


async def restock(conn: Any, product_id: int, quantity: int, *, idempotency_key: str | None = None) -> Receipt:
    """Add ``quantity`` units of ``product_id``, if and only if ``conn``'s transaction commits."""
    return (await write(conn, [restock_event(product_id, quantity, idempotency_key=idempotency_key)]))[0]


async def send(conn: Any, event: EventModel, *, idempotency_key: str | None = None) -> Receipt:
    """An event of any domain, if and only if ``conn``'s transaction commits."""
    return (await write(conn, prepare([event], idempotency_keys=[idempotency_key])))[0]


async def send_many(conn: Any, events: Iterable[Mapping[str, Any] | EventModel]) -> list[Receipt]:
    """Many events in one insert, each a mapping as :func:`seqproc.send_many` takes them; all are validated
    before any is written (the first bad one raises :class:`InvalidEvent` naming its index and field)."""
    built = build_events(events)
    return await write(conn, built) if built else []


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
