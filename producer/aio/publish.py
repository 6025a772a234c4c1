"""Publishing from an event loop: the same messages as :mod:`seqproc.producer.publish`, pushed with ``redis.asyncio``.

One :class:`AsyncPublisher` per event loop per settings (a ``redis.asyncio`` client and its connections belong to the
loop that opened them; :mod:`seqproc.producer.aio.loops` keeps them). It leans on the process's threaded
:class:`~seqproc.producer.publish.Publisher` of the same settings for everything that is not I/O, so both send the
very same messages: routing, the split into messages, the envelope and its bell, the receipts, which errors are
worth retrying and the error a failed send raises.

On a broker other than seqproc's Redis transport (``memory://`` in the embedded mode and the unit tests), a send
runs the threaded publisher in a worker thread (``asyncio.to_thread``): the loop keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from seqproc.models.clients import async_redis_client, wait_timeout_ms
from seqproc.models.errors import PartitionCountMismatch, PublishError
from seqproc.models.events import Event
from seqproc.models.transport import SEQPROC_TRANSPORTS
from seqproc.models.wire import PRODUCER_CLIENT_NAME, is_cluster_url
from seqproc.producer.aio.coalesce import AsyncCoalescer
from seqproc.producer.attempts import BOUND_SLACK_S, Attempts, deadline_of
from seqproc.producer.publish import NotReplicated, Publisher, new_sequencer, stage_messages
from seqproc.producer.receipt import Receipt

logger = logging.getLogger(__name__)


class AsyncPublisher:
    """Sends events from one event loop; its calls are coalesced (see :mod:`seqproc.producer.aio.coalesce`)."""

    def __init__(self, threaded: Publisher) -> None:
        self.threaded = threaded
        self.settings = settings = threaded.settings
        self._redis: redis.asyncio.Redis | None = None
        self._cluster = is_cluster_url(settings.broker_url)
        #: A send's longest wait for the broker, unless its deadline is nearer (see ``send``).
        self._timeout_s = settings.publish_timeout_s
        if threaded.app.conf.broker_transport in SEQPROC_TRANSPORTS:
            options = threaded.app.conf.broker_transport_options
            self._timeout_s = min(options["socket_timeout"], settings.publish_timeout_s)
            # As the threaded publisher's: each connection checks the partition count as it opens. (On a cluster the
            # threaded publisher reads the count once per process, see ``send``: redis-py's asyncio cluster client
            # takes no connect callback, and refuses the argument even as None.)
            on_connect = {} if self._cluster else {"redis_connect_func": threaded.partition_count.on_connect_async}
            self._redis = async_redis_client(
                settings.broker_url,
                sentinel_master=settings.sentinel_master,
                connect_timeout_s=min(options["socket_connect_timeout"], settings.publish_timeout_s),
                timeout_s=self._timeout_s,
                socket_keepalive=options["socket_keepalive"],
                health_check_interval=options["health_check_interval"],
                retry=Retry(NoBackoff(), 0),  # each send retries by its own deadline (as the threaded publisher)
                client_name=PRODUCER_CLIENT_NAME,
                **on_connect,
            )
        self._coalescer = AsyncCoalescer(self.send, linger_s=settings.linger_ms / 1000.0)
        #: This loop's own numbering (its sends are one at a time, apart from the other loops' and threads').
        self.sequencer = new_sequencer(threaded.marks)
        #: Messages and events this loop sent so far (through the threaded publisher: counted there too).
        self.sent_messages = 0
        self.sent_events = 0

    async def publish(self, events: Sequence[Event], *, timeout_s: float | None = None) -> list[Receipt]:
        """Send ``events`` and return one receipt per event, in order, once the broker holds them all; concurrent
        calls of the loop share messages. ``timeout_s`` as the threaded publisher's. Raises :class:`PublishError`
        if they could not be sent."""
        try:
            await self._coalescer.submit(events, deadline_of(self.settings, timeout_s))
        except PublishError as error:
            raise error.for_receipts([self.threaded.receipt(event) for event in events]) from error
        return [self.threaded.receipt(event) for event in events]

    async def send(self, events: Sequence[Event], deadline: float | None = None) -> None:
        """Publish ``events`` now: one message per partition, all in one pipelined round trip; retried while the
        broker is unreachable until ``deadline`` (default: the publish timeout from now; a refused connection
        ``publish_refused_retry_s`` at most). Raises :class:`PublishError`."""
        if self._redis is None or (self._cluster and self.settings.publish_durability == "replica"):
            # Another broker; or durability ``replica`` on a cluster, whose per-node WAIT (on the connection that
            # pushed) the threaded publisher makes (redis-py's asyncio cluster pipeline would send WAIT anywhere).
            timeout_s = None if deadline is None else max(deadline - time.monotonic(), 0.001)
            await asyncio.to_thread(self.threaded.publish, events, timeout_s=timeout_s)
            self.sent_events += len(events)
            self.sent_messages += len(self.threaded.messages_for(events))
            return
        messages = self.threaded.messages_for(events)
        places = self.sequencer.number(messages)  # once: the retries send the same numbers
        attempts = Attempts(self.settings, deadline)
        while True:
            # A retry after a failed round trip may push a message twice; the ledger makes the copy a duplicate.
            pipe = self._redis.pipeline(transaction=False)
            if self._cluster:
                # One push per message (each touches its queue's slot), pipelined per node.
                if not self.threaded.partition_count_read():
                    await asyncio.to_thread(self.threaded.check_partition_count, self.threaded._redis)
                for n, message in enumerate(messages):
                    stage_messages(pipe, [message], self.settings.pending_ttl_s, [places[n]])
            else:
                stage_messages(pipe, messages, self.settings.pending_ttl_s, places)
            remaining_s = attempts.remaining_s()
            if self.settings.publish_durability == "replica":
                # In the same round trip: once a replica has the pushes (or the time left is up).
                pipe.execute_command("WAIT", 1, wait_timeout_ms(min(remaining_s, self._timeout_s)))
            try:
                if remaining_s < self._timeout_s - BOUND_SLACK_S:
                    async with asyncio.timeout(max(remaining_s, 0.001)):
                        replies = await pipe.execute()
                else:
                    replies = await pipe.execute()
                if self.settings.publish_durability == "replica" and int(replies[-1]) < 1:
                    raise NotReplicated(f"no replica acknowledged them within {min(remaining_s, self._timeout_s):g} s")
                self.sequencer.sent(messages, places)
                break
            except PartitionCountMismatch:
                raise  # checked as the connection opened: nothing was sent
            except NotReplicated as error:
                raise self.threaded.not_replicated(events, error) from error  # on the primary: no copy
            except Exception as error:
                transient = self.threaded.is_transient(error)  # asyncio.timeout's TimeoutError is an OSError
                written = self.threaded.may_have_written(error, messages)
                pause_s = attempts.retry_after(error, transient=transient, written=written)
                if pause_s is None:
                    if not attempts.maybe_sent:
                        self.sequencer.give_back(messages, places)
                    raise self.threaded.not_sent(events, error, maybe_sent=attempts.maybe_sent) from error
                await asyncio.sleep(pause_s)
        self.sent_messages += len(messages)
        self.sent_events += len(events)
        logger.debug("sent %d message(s), %d event(s)", len(messages), len(events))

    async def aclose(self) -> None:
        """Close the loop's connections to the broker."""
        if self._redis is not None:
            await self._redis.aclose()
