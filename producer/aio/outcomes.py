"""Reading outcomes from an event loop: the outcome store of :mod:`seqproc.models.outcomes`, on ``redis.asyncio``.

A thread waiting on a receipt blocks on its own ``BLMOVE``; an event loop may have thousands of coroutines waiting at
once, and one connection each would be thousands of connections (redis.asyncio's pool refuses past 100). So the
waits of one loop are coalesced: one poller task reads every awaited outcome in one pipelined round trip
(``LINDEX`` per event id, as the threaded ``wait_all`` does), resolves the waiters whose outcome came, and pauses
2 ms after a pass that found something or saw new waiters, doubling to 100 ms while nothing moves. It runs only
while someone waits. A Redis error reaches every waiter of that pass, as it would reach a blocked thread.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import redis.asyncio.retry
from redis.backoff import ExponentialBackoff

from seqproc.models.clients import async_redis_client
from seqproc.models.outcomes import Outcome
from seqproc.models.wire import DEFAULT_SENTINEL_MASTER, outcome_key

#: Pause after a pass that resolved a waiter or saw a new one.
MIN_PAUSE_S = 0.002
#: Longest pause between passes while nothing moves.
MAX_PAUSE_S = 0.1
#: Most event ids read in one round trip.
CHUNK = 1000


#: The reader's tries of a read that met a connection error: 2 more, 0.25 s then 0.5 s later.
READER_RETRY = redis.asyncio.retry.Retry(ExponentialBackoff(cap=1.0, base=0.25), 2)


class AsyncOutcomeReader:
    """One event loop's reader of one result backend."""

    def __init__(self, url: str, *, sentinel_master: str = DEFAULT_SENTINEL_MASTER) -> None:
        self.url = url
        # Few tries, quickly: a waiter whose result backend cannot be read hears so (OutcomeUnavailable: the event
        # was sent) within its timeout, rather than an OutcomeTimeout after the client's 5.7 s of tries.
        self._client = async_redis_client(url, sentinel_master=sentinel_master, retry=READER_RETRY)
        self._waiting: dict[str, list[asyncio.Future[Outcome]]] = {}
        self._poller: asyncio.Task[None] | None = None
        self._arrivals = False

    async def get_many(self, event_ids: Sequence[str]) -> list[Outcome | None]:
        """The outcomes known now, ``None`` for the others; one round trip."""
        pipe = self._client.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.lindex(outcome_key(event_id), 0)
        return [Outcome.from_wire(json.loads(raw)) if raw else None for raw in await pipe.execute()]

    def watch(self, event_id: str) -> asyncio.Future[Outcome]:
        """A future that the poller resolves with ``event_id``'s outcome; ``unwatch`` it when done waiting."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(event_id, []).append(future)
        self._arrivals = True
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(self._poll(), name="seqproc-aio-outcomes")
        return future

    def unwatch(self, event_id: str, future: asyncio.Future[Outcome]) -> None:
        futures = self._waiting.get(event_id)
        if futures is not None and future in futures:
            futures.remove(future)
            if not futures:
                del self._waiting[event_id]

    async def _poll(self) -> None:
        pause_s = MIN_PAUSE_S
        try:
            while self._waiting:
                self._arrivals = False
                event_ids = list(self._waiting)
                found = False
                for start in range(0, len(event_ids), CHUNK):
                    chunk = event_ids[start : start + CHUNK]
                    for event_id, outcome in zip(chunk, await self.get_many(chunk), strict=True):
                        if outcome is not None:
                            found = True
                            for future in self._waiting.pop(event_id, ()):
                                if not future.done():
                                    future.set_result(outcome)
                if not self._waiting:
                    break
                pause_s = MIN_PAUSE_S if found or self._arrivals else min(pause_s * 2, MAX_PAUSE_S)
                await asyncio.sleep(pause_s)
        except Exception as error:  # Redis unreachable, say: every waiter hears of it
            waiting, self._waiting = self._waiting, {}
            for futures in waiting.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(error)
        finally:
            self._poller = None

    async def aclose(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        await self._client.aclose()
