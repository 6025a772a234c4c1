"""What asyncio application code awaits: ``await seqproc.aio.like(...)``, ``await seqproc.aio.wait(receipt)``.

The same calls as :mod:`seqproc.producer.api`, with the same validation (:class:`InvalidEvent` naming the field,
before anything is sent), the same settings (``seqproc.producer.configure`` or the environment) and the same
:class:`Receipt` (its blocking ``.wait()`` works too), the same ``timeout_s=`` (keyword-only: how long a call may
wait for the broker). Concurrent calls of one event loop share messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from seqproc.models.domain import EventModel
from seqproc.models.events import Event
from seqproc.models.outcomes import Outcome, RedisOutcomeStore
from seqproc.producer import receipt as threaded
from seqproc.producer.aio.loops import LoopClients, loop_clients
from seqproc.producer.aio.outcomes import AsyncOutcomeReader
from seqproc.producer.aio.publish import AsyncPublisher
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
from seqproc.producer.receipt import (
    DEFAULT_WAIT_TIMEOUT_S,
    READ_ERRORS,
    Receipt,
    outcomes_timed_out,
    outcomes_unavailable,
)


async def publisher() -> AsyncPublisher:
    """The running loop's publisher of the current settings."""
    return (await loop_clients()).publisher(current_settings())


async def _send(event: Event, timeout_s: float | None) -> Receipt:
    return (await (await publisher()).publish([event], timeout_s=timeout_s))[0]


async def like(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """``user_id`` likes ``article_id`` (a repeated like changes nothing)."""
    return await _send(like_event(article_id, user_id, idempotency_key=idempotency_key), timeout_s)


async def unlike(
    article_id: int, user_id: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """``user_id`` takes back their like of ``article_id`` (an unlike without a like changes nothing)."""
    return await _send(unlike_event(article_id, user_id, idempotency_key=idempotency_key), timeout_s)


async def reserve(product_id: int, quantity: int, *, reservation_id: str, timeout_s: float | None = None) -> Receipt:
    """Hold ``quantity`` units of ``product_id``; rejected with ``insufficient_stock`` if fewer are available."""
    return await _send(reserve_event(product_id, quantity, reservation_id=reservation_id), timeout_s)


async def release(product_id: int, reservation_id: str, *, timeout_s: float | None = None) -> Receipt:
    """Give a reservation's units back (once). A release that arrives before its reservation cancels it."""
    return await _send(release_event(product_id, reservation_id), timeout_s)


async def commit(product_id: int, reservation_id: str, *, timeout_s: float | None = None) -> Receipt:
    """Turn an applied reservation into a sale. Rejected for an unknown or released reservation."""
    return await _send(commit_event(product_id, reservation_id), timeout_s)


async def restock(
    product_id: int, quantity: int, *, idempotency_key: str | None = None, timeout_s: float | None = None
) -> Receipt:
    """Add ``quantity`` units of ``product_id`` (creating the product on its first restock)."""
    return await _send(restock_event(product_id, quantity, idempotency_key=idempotency_key), timeout_s)


async def send(event: EventModel, *, idempotency_key: str | None = None, timeout_s: float | None = None) -> Receipt:
    """Send an event of any domain, as :func:`seqproc.send`."""
    return await _send(prepare([event], idempotency_keys=[idempotency_key])[0], timeout_s)


async def send_many(
    events: Iterable[Mapping[str, Any] | EventModel], *, timeout_s: float | None = None
) -> list[Receipt]:
    """Many events with few messages, as :func:`seqproc.send_many`: all validated before any is sent (the first
    bad one raises :class:`InvalidEvent` naming its index and field), order kept per partition."""
    built = build_events(events)
    if not built:
        return []
    return await (await publisher()).publish(built, timeout_s=timeout_s)


async def wait(receipt: Receipt, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> Outcome:
    """The event's outcome once a worker reports it; :class:`OutcomeTimeout` after ``timeout_s``,
    :class:`OutcomeUnavailable` if the result backend cannot be read (the event was sent all the same).

    Without the event loop blocked: every wait of the loop shares one reader (see
    :mod:`seqproc.producer.aio.outcomes`). On a result backend that is not Redis (``memory://``), the receipt's own
    blocking wait runs in a worker thread."""
    reader = _reader(await loop_clients(), receipt)
    if reader is None:
        return await asyncio.to_thread(receipt.wait, timeout_s)
    future = reader.watch(receipt.event_id)
    try:
        async with asyncio.timeout(timeout_s):
            return await future
    except TimeoutError:
        raise receipt.timed_out(timeout_s) from None
    except READ_ERRORS as error:  # the reader could not read the result backend
        raise outcomes_unavailable([receipt], error) from error
    finally:
        reader.unwatch(receipt.event_id, future)


async def wait_all(receipts: Sequence[Receipt], timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> list[Outcome]:
    """The outcomes of many receipts, in order; :class:`OutcomeTimeout` names how many are missing when the time
    is up, :class:`OutcomeUnavailable` says that the result backend could not be read."""
    if not receipts:
        return []
    clients = await loop_clients()
    readers = [_reader(clients, receipt) for receipt in receipts]
    if None in readers:
        return await asyncio.to_thread(threaded.wait_all, receipts, timeout_s)
    watched = [
        (reader, receipt.event_id, reader.watch(receipt.event_id))
        for reader, receipt in zip(readers, receipts, strict=True)
        if reader is not None
    ]
    try:
        async with asyncio.timeout(timeout_s):
            return [await future for _, _, future in watched]
    except TimeoutError:
        pending = [index for index, (_, _, future) in enumerate(watched) if future.cancelled() or not future.done()]
        raise outcomes_timed_out(receipts, pending, timeout_s) from None
    except READ_ERRORS as error:
        unread = [receipt for receipt, (_, _, future) in zip(receipts, watched, strict=True) if not _read(future)]
        raise outcomes_unavailable(unread or receipts, error) from error
    finally:
        for reader, event_id, future in watched:
            reader.unwatch(event_id, future)


async def aclose() -> None:
    """Close the running loop's connections now (they reopen on the next call). Optional: they are closed anyway
    when the loop shuts down through ``asyncio.run``, ``asyncio.Runner`` or a server such as uvicorn."""
    await (await loop_clients()).aclose()


def _read(future: asyncio.Future[Outcome]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None


def _reader(clients: LoopClients, receipt: Receipt) -> AsyncOutcomeReader | None:
    store = receipt._store
    return clients.reader(store.url) if isinstance(store, RedisOutcomeStore) else None
