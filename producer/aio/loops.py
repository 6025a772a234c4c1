"""What each event loop holds: its publishers (one per settings) and outcome readers (one per result backend).

A ``redis.asyncio`` client, its connections and a coalescer's futures belong to the loop that made them: used from
another loop they fail or hang. So each loop gets its own, made on first use, and they are closed when the loop shuts
down: an asynchronous generator, started in the loop and held here, is closed by ``loop.shutdown_asyncgens()``
(which ``asyncio.run``, ``asyncio.Runner`` and uvicorn call before closing the loop), and closing it closes the
loop's clients while the loop still runs. A loop closed without that (a bare ``loop.close()``) is forgotten the next
time a new loop comes; its sockets close when they are collected.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator

from seqproc.models.settings import Settings
from seqproc.producer.aio.outcomes import AsyncOutcomeReader
from seqproc.producer.aio.publish import AsyncPublisher
from seqproc.producer.publish import publisher_for


class LoopClients:
    """One event loop's publishers and outcome readers."""

    def __init__(self) -> None:
        self.publishers: dict[Settings, AsyncPublisher] = {}
        self.readers: dict[tuple[str, str], AsyncOutcomeReader] = {}
        self._last: tuple[Settings, AsyncPublisher] | None = None
        #: Closed by the loop's shutdown_asyncgens(); see the module's docstring.
        self._watcher: AsyncGenerator[None, None] | None = None

    def publisher(self, settings: Settings) -> AsyncPublisher:
        """This loop's publisher of ``settings``; the last one is found without hashing the settings."""
        last = self._last
        if last is not None and last[0] is settings:
            return last[1]
        publisher = self.publishers.get(settings)
        if publisher is None:
            publisher = self.publishers[settings] = AsyncPublisher(publisher_for(settings))
        self._last = (settings, publisher)
        return publisher

    def reader(self, url: str, sentinel_master: str) -> AsyncOutcomeReader:
        """This loop's reader of the result backend at ``url`` (for ``sentinel://``, of the master so named)."""
        reader = self.readers.get((url, sentinel_master))
        if reader is None:
            reader = self.readers[(url, sentinel_master)] = AsyncOutcomeReader(url, sentinel_master=sentinel_master)
        return reader

    async def aclose(self) -> None:
        """Close every client of the loop (they are made again on the next call)."""
        publishers, readers = list(self.publishers.values()), list(self.readers.values())
        self.publishers, self.readers, self._last = {}, {}, None
        for publisher in publishers:
            await publisher.aclose()
        for reader in readers:
            await reader.aclose()

    async def _watch(self, loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:
            _forget(loop, self)
            if not loop.is_closed():
                await self.aclose()


_CLIENTS: dict[asyncio.AbstractEventLoop, LoopClients] = {}
_LOCK = threading.Lock()  # loops of several threads
_last: tuple[asyncio.AbstractEventLoop, LoopClients] | None = None


async def loop_clients() -> LoopClients:
    """The running loop's clients, made on its first call."""
    global _last
    loop = asyncio.get_running_loop()
    last = _last
    if last is not None and last[0] is loop:
        return last[1]
    with _LOCK:
        clients = _CLIENTS.get(loop)
        fresh = clients is None
        if clients is None:
            for closed in [other for other in _CLIENTS if other.is_closed()]:
                del _CLIENTS[closed]
            clients = _CLIENTS[loop] = LoopClients()
        _last = (loop, clients)
    if fresh:
        # First iteration registers the generator with the loop (its asyncgen hooks); it stops at its yield.
        clients._watcher = clients._watch(loop)
        await anext(clients._watcher)
    return clients


def _forget(loop: asyncio.AbstractEventLoop, clients: LoopClients) -> None:
    global _last
    with _LOCK:
        if _CLIENTS.get(loop) is clients:
            del _CLIENTS[loop]
        if _last is not None and _last[0] is loop:
            _last = None
