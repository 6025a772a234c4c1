"""What asyncio application code awaits: ``await seqproc.aio.like(...)``, ``await seqproc.aio.wait(receipt)``.

The same calls as :mod:`seqproc.producer.api` (:class:`~seqproc.producer.calls.Calls` over
:class:`AsyncBrokerSender`), with the same validation (:class:`InvalidEvent` naming the field,
before anything is sent), the same settings (``seqproc.producer.configure`` or the environment) and the same
:class:`Receipt` (its blocking ``.wait()`` works too), the same ``timeout_s=`` (keyword-only: how long a call may
wait for the broker). Concurrent calls of one event loop share messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Never

from seqproc.models.events import Event
from seqproc.models.outcomes import Outcome, RedisOutcomeStore
from seqproc.producer import receipt as threaded
from seqproc.producer.aio.loops import LoopClients, loop_clients
from seqproc.producer.aio.outcomes import AsyncOutcomeReader
from seqproc.producer.aio.publish import AsyncPublisher
from seqproc.producer.api import current_settings
from seqproc.producer.calls import Calls, SendOptions
from seqproc.producer.fronts import TIMEOUT_S, Front
from seqproc.producer.receipt import (
    DEFAULT_WAIT_TIMEOUT_S,
    READ_ERRORS,
    Receipt,
    outcomes_timed_out,
    outcomes_unavailable,
)

__all__ = ["aclose", "wait", "wait_all"]
# The calls (producer.calls.CALLS): every front exports the same list.
__all__ += ["commit", "like", "release", "reserve", "restock", "send", "send_many", "unlike"]


async def publisher() -> AsyncPublisher:
    """The running loop's publisher of the current settings."""
    return (await loop_clients()).publisher(current_settings())


class AsyncBrokerSender:
    """The broker, through the running loop's publisher of the current settings: a call returns once the broker holds
    its events; concurrent calls of the loop share messages."""

    async def one(self, event: Event, options: SendOptions[float | None, Never]) -> Receipt:
        return (await (await publisher()).publish([event], timeout_s=options.get("timeout_s")))[0]

    async def many(self, events: list[Event], options: SendOptions[float | None, Never]) -> list[Receipt]:
        if not events:
            return []
        return await (await publisher()).publish(events, timeout_s=options.get("timeout_s"))


_front = Front(
    Calls(AsyncBrokerSender()),
    __name__,
    option=TIMEOUT_S,
    sent="Awaited: returns once the broker holds the event(s); raises :class:`PublishError` if the broker cannot be "
    "reached within ``timeout_s`` (keyword-only, default ``SEQPROC_PUBLISH_TIMEOUT_S``).",
    asynchronous=True,
)
like, unlike = _front.export(Calls.like), _front.export(Calls.unlike)
restock, reserve = _front.export(Calls.restock), _front.export(Calls.reserve)
release, commit = _front.export(Calls.release), _front.export(Calls.commit)
send, send_many = _front.export(Calls.send), _front.export(Calls.send_many)


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
    return clients.reader(store.url, store.sentinel_master) if isinstance(store, RedisOutcomeStore) else None
