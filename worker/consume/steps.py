"""Celery's consumer, with every path that would drop a message turned into a dead letter.

Stock Celery logs and acks (drops) a message it cannot decode, one without task headers, one naming an unknown
task, or one of a refused content type (pickle). Here each is stored in ``dead_letter`` with its raw body and the
reason, then acked. A consumer step also applies whatever the batcher holds when the consumer stops (SIGTERM,
broker reconnect), so that a warm shutdown finishes the batch in hand, commits, acks and exits.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import bootsteps
from celery.worker.consumer import Consumer

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


class SeqprocConsumer(Consumer):
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

    def tick(self, c: Any) -> None:
        rt = runtime.of(c.app)
        try:
            _keeper(rt).tick(
                on_acquire=lambda partition, epoch: self._acquired(c, partition, epoch),
                on_release=lambda partition: self._releasing(c, partition),
                on_lost=lambda partition: self._lost(c, partition),
            )
        except Exception as error:
            # Redis or PostgreSQL unreachable: leases are not renewed (nor heartbeats written), so ``fresh`` turns
            # false and nothing is applied to a partition that may have moved; the next tick tries again.
            logger.warning("partition ownership: %s; trying again at the next tick", first_line(error))
            logger.debug("partition ownership tick failed", exc_info=True)
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


class ChunkStep(bootsteps.StartStopStep):
    """On seqproc's Redis transport, a partition worker takes each fetch whole: the channel hands the batcher every
    message it fetched in one call (``ChunkConsumer``), instead of building a kombu message and a Celery request
    per message. The beat's worker (the jobs queue) keeps Celery's per-message path."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def start(self, c: Any) -> None:
        channel = getattr(getattr(c, "task_consumer", None), "channel", None)
        if isinstance(channel, Channel) and runtime.of(c.app).role == "worker":
            batcher = batcher_of(c)
            channel.chunk_consumer = batcher
            batcher.source = channel  # while a batch is open, its timer fetches (no wait on the bells)
            # A consumer restarted after a connection error: a fetch whose reply was lost may have left messages in
            # unacked, delivered to nobody; they go back in line before anything newer is fetched.
            batcher.restore_stranded(channel)

    def stop(self, c: Any) -> None:
        channel = getattr(getattr(c, "task_consumer", None), "channel", None)
        if isinstance(channel, Channel):
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
