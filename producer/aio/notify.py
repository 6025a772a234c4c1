"""``async for n in seqproc.aio.notifications("user:42")``: a topic's outcome notifications as they come, on
``redis.asyncio`` (one connection per stream: it blocks in ``XREAD`` while nothing comes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from seqproc.models.clients import async_redis_client
from seqproc.models.notifications import Notification, from_xread, xread_args
from seqproc.models.outcomes import WAIT_SLICE_S, outcome_store
from seqproc.models.wire import is_redis_url
from seqproc.producer.api import current_settings
from seqproc.producer.build import notice


async def notifications(topic: str, after: str | None = None) -> AsyncIterator[Notification]:
    """Every notification of ``topic`` after the cursor ``after`` (None: from the oldest kept), then each new one
    as the workers publish it, for as long as the caller iterates (a server-sent events stream, say). Remember the
    last ``cursor`` handled to resume after a reconnect without missing one."""
    notice(topic, None)
    settings = current_settings()
    if not is_redis_url(settings.result_backend):  # the embedded mode's memory backend: its blocking read in a thread
        store = outcome_store(settings.result_backend, ttl_s=settings.outcome_ttl_s)
        while True:
            for found in await asyncio.to_thread(store.notifications, topic, after, WAIT_SLICE_S):
                after = found.cursor
                yield found
    # Its blocking read comes in slices of WAIT_SLICE_S: the socket timeout outlasts one.
    client = async_redis_client(
        settings.result_backend, sentinel_master=settings.sentinel_master, timeout_s=WAIT_SLICE_S + 10
    )
    try:
        while True:
            reply = await client.xread(**xread_args(topic, after), block=int(WAIT_SLICE_S * 1000))
            for found in from_xread(reply):
                after = found.cursor
                yield found
    finally:
        await client.aclose()
