"""Celery's consumer, with every path that would drop a message turned into a dead letter.

Stock Celery logs and acks (drops) a message it cannot decode, one without task headers, one naming an unknown
task, or one of a refused content type (pickle). Here each is stored in ``dead_letter`` with its raw body and the
reason, then acked. A consumer step also applies whatever the batcher holds when the consumer stops (SIGTERM,
broker reconnect), so that a warm shutdown finishes the batch in hand, commits, acks and exits.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import redis
from celery import bootsteps
from celery.worker import heartbeat
from celery.worker.consumer import Consumer
from celery.worker.consumer import heart as heart_step

from seqproc.models.broker_watch import timed_out
from seqproc.models.errors import first_line
from seqproc.models.transport import Channel
from seqproc.models.wire import APPLY_TASK, partition_of_queue, queue_name
from seqproc.worker import runtime
from seqproc.worker.consume.batching import Batcher, should_stop
from seqproc.worker.consume.decode import body_text
from seqproc.worker.consume.retry import StopRetrying, retry_in_place
from seqproc.worker.engine.apply import DeadLetterRecord, store_dead_letters
from seqproc.worker.ownership.partitions import restore_unacked
from seqproc.worker.ownership.static import fence

logger = logging.getLogger(__name__)


def batcher_of(c: Any) -> Batcher:
    """The batcher of consumer ``c``'s apply task."""
    batcher: Batcher | None = c.app.tasks[APPLY_TASK].batcher
    if batcher is None:
        raise RuntimeError("no seqproc runtime attached to the apply task: start workers with `seqproc worker`")
    return batcher


def dead_letter_message(rt: runtime.Runtime, message: Any, error: str) -> None:
    """Store ``message`` as a dead letter, then ack it. Unacked (left for redelivery) if the store stays down."""
    delivery = message.delivery_info or {}
    queue = delivery.get("routing_key")
    record = DeadLetterRecord(
        error=error[:4000],
        body=body_text(message.body),
        partition=partition_of_queue(queue) if isinstance(queue, str) else None,
        queue=queue if isinstance(queue, str) else None,
        content_type=message.content_type,
    )

    def write() -> None:
        with rt.engine.begin() as conn:
            store_dead_letters(conn, [record])

    try:
        retry_in_place(
            write,
            what="store a dead letter",
            backoff_max_s=rt.settings.retry_backoff_max_s,
            should_stop=should_stop,
        )
    except StopRetrying:
        return
    message.ack()
    if rt.hooks.on_dead_letter:
        rt.hooks.fire(rt.hooks.on_dead_letter, [record])


#: Pause between two attempts to reconnect to the broker: Celery's pauses grow to 30 s, so a worker whose broker
#: came back (a healed network) would wait up to that long more; each attempt on a broker that does not answer
#: waits out ``SEQPROC_BROKER_SOCKET_TIMEOUT_S`` besides.
RECONNECT_PAUSE_S = 1.0


class Heart(heart_step.Heart):
    """Celery's worker heartbeat (what Flower shows as online), sent without retries (:class:`BoundedHeart`)."""

    def start(self, c: Any) -> None:
        interval = self.heartbeat_interval  # type: ignore[attr-defined]  # set by Celery's __init__; not in the stubs
        c.heart = BoundedHeart(c.timer, c.event_dispatcher, interval)
        c.heart.start()


class BoundedHeart(heartbeat.Heart):
    """Celery publishes each heartbeat with ``retry=True`` and no retry policy, from the consumer's event loop; kombu
    then retries a publish on a broker that stopped answering (a half-open connection) without end, opening a
    channel per try, and the whole worker stalls until the network heals. Sent once instead: one that fails waits
    out one socket timeout and is kept by the dispatcher (``buffer_while_offline``) until the connection is back."""

    def _send(self, event: str, retry: bool = True) -> Any:
        return super()._send(event, retry=False)  # type: ignore[misc]  # private in Celery, absent from the stubs


class SeqprocConsumer(Consumer):
    class Blueprint(Consumer.Blueprint):  # type: ignore[valid-type,misc]  # a class attribute in the stubs
        # Celery's steps, its heartbeat replaced by one that never retries from the event loop.
        default_steps = [
            step if step != "celery.worker.consumer.heart:Heart" else Heart for step in Consumer.Blueprint.default_steps
        ]

    def ensure_connected(self, conn: Any) -> Any:
        """Celery's reconnect, without its growing pauses (:data:`RECONNECT_PAUSE_S`). Connected (a new channel
        opened and answered its ``PING``), the broker answers again: the process's :class:`BrokerWatch` is
        cleared."""
        conn.ensure_connection = partial(
            conn.ensure_connection, interval_start=0, interval_step=RECONNECT_PAUSE_S, interval_max=RECONNECT_PAUSE_S
        )
        connected = super().ensure_connected(conn)
        runtime.of(self.app).broker_watch.clear()
        return connected

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_message(runtime.of(self.app), message, f"cannot decode message: {type(exc).__name__}: {exc}")

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_message(runtime.of(self.app), message, "not a Celery task message (no task header)")

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        name = (message.headers or {}).get("task")
        dead_letter_message(
            runtime.of(self.app), message, f"unknown task {name!r}: partition queues carry only seqproc.apply"
        )

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(runtime.of(self.app), message, f"invalid task message: {type(exc).__name__}: {exc}")


class LeaseStep(bootsteps.StartStopStep):
    """Partition ownership, ticked in the consumer's own loop (the channel is not thread-safe), starting and
    stopping partition queues as partitions come and go: ``--partitions auto`` renews its leases every third of
    their time limit; a fixed set heartbeats, gives up a partition taken over and resumes it once its taker is
    gone (``worker.ownership.static``)."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self._timer: Any = None

    def start(self, c: Any) -> None:
        keeper = _keeper(runtime.of(c.app))
        if keeper is not None:
            self._timer = c.timer.call_repeatedly(keeper.interval_s, self.tick, (c,))
            if c.restart_count > 0:
                # Reconnected (the broker was away): take the partitions back now, not a tick later.
                c.timer.call_after(0.0, self.tick, (c,))

    def tick(self, c: Any) -> None:
        rt = runtime.of(c.app)
        if rt.broker_watch.silent is not None:
            return  # the broker went silent: the consumer reconnects at the event loop's next turn
        try:
            more = _keeper(rt).tick(
                on_acquire=lambda partition, epoch: self._acquired(c, partition, epoch),
                on_release=lambda partition: self._releasing(c, partition),
                on_lost=lambda partition: self._lost(c, partition),
            )
            if more:  # out of time for claims, partitions left to take: again after a turn of the event loop
                c.timer.call_after(0.0, self.tick, (c,))
        except Exception as error:
            # Redis or PostgreSQL unreachable: leases are not renewed (nor heartbeats written), so ``fresh`` turns
            # false and nothing is applied to a partition that may have moved; the next tick tries again.
            logger.warning("partition ownership: %s; trying again at the next tick", first_line(error))
            logger.debug("partition ownership tick failed", exc_info=True)
            if isinstance(error, redis.RedisError) and timed_out(error):
                timeout_s = rt.settings.broker_socket_timeout_s
                rt.broker_watch.mark(error, timeout_s=timeout_s, where="the lease renewal")
                return
        if rt.static is None:
            return
        try:
            # Apart: a broker away must not keep the heartbeat (in PostgreSQL) from being written.
            rt.static.keep_fences(c.connection.default_channel)
        except Exception as error:
            logger.warning("partition fetch fences: %s; trying again at the next tick", first_line(error))

    def _acquired(self, c: Any, partition: int, epoch: int) -> None:
        rt = runtime.of(c.app)
        rt.epochs[partition] = epoch
        channel = c.connection.default_channel
        if rt.static is not None:
            # A fixed worker's fence (an auto worker's is its lease, set before the claim): before the restore.
            fence(channel, [partition], rt.owner)
        # The previous owner can no longer commit (epoch raised): its unacked messages come back first, in order.
        restore_unacked(channel, [queue_name(partition)])
        c.add_task_queue(queue_name(partition))

    def _releasing(self, c: Any, partition: int) -> None:
        batcher = batcher_of(c)
        batcher.flush()  # apply and ack what is held, while the lease is still ours
        batcher.rt.epochs.pop(partition, None)
        c.cancel_task_queue(queue_name(partition))

    def _lost(self, c: Any, partition: int) -> None:
        batcher = batcher_of(c)
        batcher.rt.epochs.pop(partition, None)
        batcher.give_back_partition(partition)
        c.cancel_task_queue(queue_name(partition))

    def stop(self, c: Any) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _keeper(rt: runtime.Runtime) -> Any:
    """What ticks: the leases (``--partitions auto``), the fixed set's heartbeat, or nothing (embedded, beat)."""
    return rt.leases if rt.leases is not None else rt.static


def task_channel(c: Any) -> Channel | None:
    """Consumer ``c``'s channel on seqproc's Redis transport (None on another transport, or before it starts)."""
    channel = getattr(getattr(c, "task_consumer", None), "channel", None)
    return channel if isinstance(channel, Channel) else None


class ChunkStep(bootsteps.StartStopStep):
    """On seqproc's Redis transport, a partition worker takes each fetch whole: the channel hands the batcher every
    message it fetched in one call (``ChunkConsumer``), instead of building a kombu message and a Celery request
    per message. The beat's worker (the jobs queue) keeps Celery's per-message path."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        channel = task_channel(c)
        if channel is not None and runtime.of(c.app).role == "worker":
            batcher = batcher_of(c)
            channel.chunk_consumer = batcher
            batcher.source = channel  # while a batch is open, its timer fetches (no wait on the bells)
            # A consumer restarted after a connection error: a fetch whose reply was lost may have left messages in
            # unacked, delivered to nobody; they go back in line before anything newer is fetched. (Its first start
            # needs none: the runner restored them as the worker started, a lease's claim as it takes a partition.)
            batcher.consumer_starts += 1
            if batcher.consumer_starts > 1:
                batcher.restore_stranded(channel)

    def stop(self, c: Any) -> None:
        channel = task_channel(c)
        if channel is not None:
            if isinstance(channel.chunk_consumer, Batcher):
                channel.chunk_consumer.source = None
            channel.chunk_consumer = None

    def shutdown(self, c: Any) -> None:
        self.stop(c)


class FlushOnStop(bootsteps.StartStopStep):
    """Apply and ack what the batcher holds before the consumer's connection goes away (and, for an auto worker,
    before its leases are released)."""

    requires = (LeaseStep,)

    def stop(self, c: Any) -> None:
        batcher: Batcher | None = c.app.tasks[APPLY_TASK].batcher
        if batcher is not None and batcher.buffer:
            logger.info("consumer stopping: applying the %d message(s) in hand", len(batcher.buffer))
            batcher.flush()
        if batcher is not None:
            for stopping in batcher.rt.on_stop:
                try:
                    stopping()
                except Exception:
                    logger.warning("consumer stopping: %r failed", stopping, exc_info=True)

    def shutdown(self, c: Any) -> None:
        self.stop(c)
