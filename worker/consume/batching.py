"""The consumer side of the apply task: gather messages, apply each partition's events in ONE transaction, then ack.

Why not celery-batches: it declares ``celery<5.7``, hands batches to the pool (we need the single consumer thread
for per-partition order), and acks nothing we could give back in order on a fence. This strategy is ~150 lines on
Celery's documented Task.Strategy hook.

Flow per message (in the consumer's thread; the solo pool runs nothing else):
- decode it (JSON only; invalid events become dead letters) and add it to the buffer;
- flush when the buffer holds ``batch_size`` events, or as many messages as the prefetch lets us hold (no more will
  come until we ack; the prefetch is at least ``batch_size`` messages, so even one-event messages fill a batch), or
  once no message came for ``batch_interval_ms``, or ``batch_max_wait_ms`` after the first one, whichever is first;
- while a batch is open on seqproc's Redis transport, the batcher fetches on its own timer (:class:`ChunkSource`)
  instead of the channel waking on every message's bell: the first fetch ``batch_interval_ms`` after the batch
  opened, each next one twice as late while messages keep coming (up to ``batch_max_wait_ms / 4``), at once while a
  backlog is waiting; a fetch that finds nothing means arrivals paused, and the batch is applied. One fetch then
  carries everything that arrived meanwhile: under a steady stream of one-event messages (a web server's), the
  worker pays a fetch per few milliseconds, not per message, and the busier it gets the cheaper each event;
- flush: per partition, in arrival order, one transaction (ledger, rules, dead letters, fence), retried in place on a
  transient error; then publish the outcomes, then ack the messages;
- if the partition was taken over (fenced), the messages go back to the head of their queue, in order, unacked.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import redis
from celery.worker import state as worker_state
from kombu.transport.virtual import QoS as VirtualQoS

from seqproc.models.errors import PartitionFenced
from seqproc.models.events import Event, Replay
from seqproc.models.notifications import Notices, notices_of
from seqproc.models.outcomes import DEAD_LETTER_REASONS, Outcome
from seqproc.models.pending import settled_by_key
from seqproc.models.transport import FETCH_MAX, Fetched
from seqproc.models.wire import queue_name
from seqproc.worker.consume.decode import Decoded, decode_chunk, decode_message
from seqproc.worker.consume.retry import StopRetrying, retry_in_place
from seqproc.worker.engine.apply import (
    BatchResult,
    DeadLetterRecord,
    PartitionBatch,
    apply_batch,
    apply_partitions,
    park,
    store_dead_letters,
)
from seqproc.worker.engine.sequence import Sequenced
from seqproc.worker.hooks import Committed, FlushStarting, Settled
from seqproc.worker.ops.logs import log_event
from seqproc.worker.ownership.liveness import holder_of
from seqproc.worker.ownership.partitions import restore_unacked
from seqproc.worker.runtime import Runtime

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A timer that fires this close before the batch's due time counts as on time (timers round; a new timer for the
#: remaining microseconds would cost a turn of the event loop).
TIMER_SLACK_S = 0.0001


class ChunkSource(Protocol):
    """Where the batcher fetches from while a batch is open (seqproc's Redis channel): the channel then waits on no
    bell, and the batcher's timer fetches instead."""

    def fetch_now(self) -> int:
        """Fetch what is waiting and hand it to the batcher (:meth:`Batcher.deliver`, an empty chunk if nothing);
        how many messages it took."""
        ...


@dataclass
class Held:
    """A message held unacknowledged until its partition's transaction commits."""

    message: Any
    decoded: Decoded
    #: Committed and acked (or given back): a shutdown in the middle must not give it back again.
    settled: bool = False


class Batcher:
    """One per worker process, owned by the apply task (built around the process's runtime). Rebound to the
    consumer each time Celery (re)starts it, so that a broker reconnect neither loses the buffer nor stops
    batching."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.consumer: Any = None
        #: How many times Celery's consumer started with this batcher (more than once: after a connection error).
        self.consumer_starts = 0
        self.buffer: list[Held] = []
        self.events_held = 0
        self._timer: Any = None
        self._first_arrival_s = 0.0
        self._last_arrival_s = 0.0
        #: The last fetch left messages in the queues: flush at the batch's size, not when arrivals pause.
        self._backlog = False
        #: When the pending timer fires (monotonic seconds).
        self._timer_at = 0.0
        #: Set by the worker on seqproc's Redis transport: while a batch is open, fetch on the timer from here.
        self.source: ChunkSource | None = None
        #: The wait after the last arrival before the next fetch (or, without a source, before the flush).
        self._step_s = 0.0

    # -- wiring -----------------------------------------------------------------------------------------------
    def bind(self, consumer: Any) -> Callable[..., None]:
        if self.buffer:
            # Messages of the previous connection: apply them now; their acks may fail, and a redelivered copy
            # is then reported as a duplicate. Holding them would let newer events overtake them.
            self.flush()
        self.consumer = consumer
        self._timer = None
        return self.on_message

    # -- receiving --------------------------------------------------------------------------------------------
    def on_message(self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **_: Any) -> None:
        """One message through Celery's per-message path (other transports, and the beat's worker)."""
        decoded = decode_message(message, partitions=self.rt.settings.partitions)
        first = not self.buffer
        self.buffer.append(Held(message, decoded))
        self.events_held += len(decoded.events)
        self._received(first)

    def room(self) -> int:
        """How many more messages the transport may hand over now (:class:`ChunkConsumer`)."""
        prefetch = self.consumer.qos.value if self.consumer is not None and self.consumer.qos else 0
        return max(0, (prefetch or FETCH_MAX) - len(self.buffer))

    def deliver(self, chunk: list[Fetched], *, more: bool = False) -> None:
        """A whole fetch from seqproc's Redis transport at once (:class:`ChunkConsumer`): decoded together, held
        unacknowledged like single messages, without a kombu message or a Celery request per message. ``more``:
        the fetch left messages in the queues (a backlog), so the gap before the next fetch is no sign that
        arrivals stopped. An empty ``chunk``: a fetch found nothing (for this worker), so arrivals have paused."""
        self._backlog = more
        if not chunk:
            timer = getattr(self.consumer, "timer", None)
            if self.buffer and self.source is not None:
                self.flush()  # arrivals paused: nothing more is worth waiting for
            elif self.buffer and timer is not None:
                self._schedule(time.monotonic(), timer)  # a batch waiting for the backlog to end is due sooner
            return
        first = not self.buffer
        for message, decoded in zip(chunk, decode_chunk(chunk, partitions=self.rt.settings.partitions), strict=True):
            self.buffer.append(Held(message, decoded))
            self.events_held += len(decoded.events)
        self._received(first)

    def _received(self, first: bool) -> None:
        """``first``: what just came is the first of a batch (the buffer was empty): ``batch_max_wait_ms`` counts
        from now."""
        settings = self.rt.settings
        prefetch = self.consumer.qos.value if self.consumer is not None and self.consumer.qos else 0
        timer = getattr(self.consumer, "timer", None) if self.consumer is not None else None
        now = time.monotonic()
        self._last_arrival_s = now
        if first:
            self._first_arrival_s = now
            self._step_s = settings.batch_interval_ms / 1000.0
        elif self.source is not None:
            # Messages keep coming: the next fetch is twice as late (it carries twice as many), up to a quarter of
            # batch_max_wait_ms.
            self._step_s = min(self._step_s * 2, settings.batch_max_wait_ms / 4000.0)
        if (
            self.events_held >= settings.batch_size
            or (prefetch and len(self.buffer) >= prefetch)  # no more will come until we ack
            or settings.batch_interval_ms == 0
            or self.consumer is None
            or self.consumer.hub is None  # no event loop (memory transport): no timer thread races the buffer
            or timer is None
        ):
            self.flush()
        else:
            self._schedule(now, timer)

    def filling(self) -> bool:
        """Holding a batch not yet applied, and not shutting down: the transport may fetch again at once
        (:class:`ChunkConsumer`)."""
        return bool(self.buffer) and not should_stop()

    def fetches_itself(self) -> bool:
        """An open batch whose timer fetches from :attr:`source`: the channel need not wait on the bells
        (:class:`ChunkConsumer`)."""
        # Not while a backlog waits: the fetch that left it rang a bell, and the channel drains it in a row
        # (``DRAIN_FETCHES``) without a timer per fetch (the event loop fires at most 10 timers a turn, then sleeps).
        return self.source is not None and self._timer is not None and not self._backlog and self.filling()

    def restore_stranded(self, channel: Any) -> None:
        """See :meth:`ChunkConsumer.restore_stranded`: the unacked messages of the partitions this worker still
        owns, back at the heads of their queues (this worker holds none of them now: its batch was applied)."""
        leases = self.rt.leases
        queues = [queue_name(p) for p in self.rt.epochs if leases is None or leases.fresh(p)]
        restored = restore_unacked(channel, queues)
        if restored:
            logger.warning("a fetch's reply was lost: %d message(s) it may have taken are back in line", restored)

    def _due(self) -> float:
        """When the batch held is due: once messages stopped coming for ``batch_interval_ms``, or
        ``batch_max_wait_ms`` after its first one came, whichever is first. Draining a backlog, a fetch of FETCH_MAX
        messages can take longer than batch_interval_ms: the batch then fills (``batch_size``, the prefetch, or
        ``batch_max_wait_ms``) and commits in one transaction, not several."""
        settings = self.rt.settings
        cap_at = self._first_arrival_s + settings.batch_max_wait_ms / 1000.0
        if self._backlog:
            return cap_at  # the channel drains it: the batch fills
        return min(self._last_arrival_s + self._step_s, cap_at)

    def _schedule(self, now: float, timer: Any) -> None:
        """Have the timer fire by the time the batch is due (it may fire earlier, and then look again)."""
        due = self._due()
        if self._timer is not None:
            if self._timer_at <= due:
                return
            self._timer.cancel()  # due sooner than planned: a backlog ended
        self._timer_at = due
        self._timer = timer.call_after(max(0.0, due - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if not self.buffer:
            return
        now = time.monotonic()
        settings = self.rt.settings
        if self.consumer is None or now >= self._first_arrival_s + settings.batch_max_wait_ms / 1000.0:
            self.flush()
        elif now + TIMER_SLACK_S < self._due():
            self._schedule(now, self.consumer.timer)
        elif self.source is None or should_stop():
            self.flush()
        else:
            try:
                self.source.fetch_now()  # delivers: more (a later fetch) or nothing (the flush), or fills the batch
            except Exception:
                # The broker went away: apply what is held; the channel's wait reconnects as it always does.
                logger.warning("fetch while a batch was open failed; applying the batch in hand", exc_info=True)
                self.flush()
                return
            if self.buffer and self._timer is None:
                self._schedule(time.monotonic(), self.consumer.timer)

    # -- applying ---------------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Apply what is held: every owned partition's events in ONE transaction, then report and ack."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._backlog = False
        held, self.buffer, self.events_held = self.buffer, [], 0
        by_partition: dict[int | None, list[Held]] = {}
        for item in held:
            by_partition.setdefault(item.decoded.partition, []).append(item)
        orphans = by_partition.pop(None, [])
        try:
            if orphans:  # not from a partition queue: only dead letters can come of them
                dead = [d for item in orphans for d in item.decoded.dead_letters]
                self._store_dead_letters_only(dead)
                self._ack(orphans)
                told = dead_letter_outcomes(dead)
                if told:
                    # After the ack: a shutdown while the result backend is away must not send back messages whose
                    # letters are committed (they would be stored twice); only their waiters would miss them.
                    self._publish_outcomes(None, told)
                if dead and self.rt.hooks.on_dead_letter:
                    self.rt.hooks.fire(self.rt.hooks.on_dead_letter, dead)
            owned: dict[int, list[Held]] = {}
            leases = self.rt.leases
            for partition, items in by_partition.items():
                if partition in self.rt.epochs and (leases is None or leases.fresh(partition)):
                    owned[partition] = items
                else:
                    logger.warning(
                        "partition %d: not owned by this worker; %d message(s) go back", partition, len(items)
                    )
                    self._give_back(items)
            self._apply(owned)
        except StopRetrying:
            left = [item for items in by_partition.values() for item in items if not item.settled]
            logger.warning("shutting down during a retry: %d message(s) go back to their queue", len(left))
            self._give_back(left)

    def _apply(self, owned: dict[int, list[Held]]) -> None:
        """Commit what the owned partitions hold, then settle each committed partition (outcomes, acks, events)."""
        hooks = self.rt.hooks
        started = time.monotonic()
        if hooks.before_flush and owned:
            hooks.fire(hooks.before_flush, FlushStarting(tuple(owned), sum(map(len, owned.values()))))
        committed = self._commit(owned)
        if not committed:
            return
        elapsed = time.monotonic() - started
        if hooks.after_commit:
            hooks.fire(hooks.after_commit, Committed(committed, elapsed))
        for batch, result in committed:
            self._settle(batch, owned[batch.partition], result, elapsed)

    def _commit(self, owned: dict[int, list[Held]]) -> list[tuple[PartitionBatch, BatchResult]]:
        """Apply every owned partition's events in ONE transaction, retried in place on transient errors.

        A partition found fenced gives its messages back (:meth:`_fenced`, which drops it from ``owned``) and the
        others try again without it. A transaction that fails for another reason (a bug, a constraint that cannot
        hold) is redone event by event to find the events at fault (:meth:`_isolate_each`).
        """
        while owned:
            batches = [self._batch(partition, items) for partition, items in owned.items()]
            what = f"partitions {','.join(map(str, owned))}: apply {sum(len(b.events) for b in batches)} event(s)"
            try:
                results = self._retry(partial(self._transaction, batches), what)
            except PartitionFenced as error:
                for partition in error.partitions:
                    self._fenced(partition, owned.pop(partition))
                continue
            except StopRetrying:
                raise
            except Exception as error:
                logger.exception("batch failed (%s); applying its events one at a time", error)
                return self._isolate_each(owned, batches)
            return list(zip(batches, results, strict=True))
        return []

    def _batch(self, partition: int, items: list[Held]) -> PartitionBatch:
        return PartitionBatch(
            partition,
            [event for item in items for event in item.decoded.events],
            self.rt.epochs[partition],
            [d for item in items for d in item.decoded.dead_letters],
            [item.decoded.sequence for item in items if item.decoded.sequence is not None],
        )

    def _isolate_each(
        self, owned: dict[int, list[Held]], batches: list[PartitionBatch]
    ) -> list[tuple[PartitionBatch, BatchResult]]:
        committed = []
        for batch in batches:
            try:
                committed.append((batch, self._isolate(batch)))
            except PartitionFenced:
                # Taken over while isolating: what this worker committed before stays (its epoch was current
                # then); the new owner gets every message back and reports those as duplicates.
                self._fenced(batch.partition, owned.pop(batch.partition))
        return committed

    def _fenced(self, partition: int, items: list[Held]) -> None:
        """``partition`` was taken over: its messages go back for the new owner, and its consumer stops."""
        logger.error(
            "partition %d: fenced: taken over by %s; %d message(s) go back, its consumer stops%s",
            partition,
            holder_of(self.rt.engine, partition),
            len(items),
            " (it resumes the partition when that worker exits)" if self.rt.static is not None else "",
        )
        self.rt.epochs.pop(partition, None)
        self._give_back(items)
        self._stop_consuming(partition)

    def _settle(self, batch: PartitionBatch, items: list[Held], result: BatchResult, elapsed: float) -> None:
        """After the commit: publish the outcomes (those of the events dead-lettered on arrival too), ack the
        messages, then fire ``on_dead_letter`` and ``after_settle``."""
        events = [*batch.events, *(event for event, _ in result.replayed)] if result.replayed else batch.events
        outcomes = (
            [*result.outcomes, *(outcome for _, outcome in result.replayed)] if result.replayed else result.outcomes
        )
        self._report(batch.partition, events, outcomes, batch.dead_letters)
        self._ack(items)
        for item in items:
            item.settled = True
        hooks = self.rt.hooks
        if batch.dead_letters and hooks.on_dead_letter:
            hooks.fire(hooks.on_dead_letter, batch.dead_letters)
        if hooks.after_settle:
            decoded = [item.decoded for item in items]
            hooks.fire(hooks.after_settle, Settled(batch.partition, events, outcomes, decoded, elapsed))
        logger.debug(
            "partition %d: %d event(s) from %d message(s) in %.1f ms (applied %d, duplicate %d, rejected %d)",
            batch.partition,
            len(batch.events),
            len(items),
            elapsed * 1000,
            result.applied,
            result.duplicates,
            result.rejected,
        )

    def _transaction(self, batches: list[PartitionBatch]) -> list[BatchResult]:
        with self.rt.engine.begin() as conn:
            return apply_partitions(conn, batches, reservation_ttl_s=self.rt.settings.reservation_ttl_s)

    def _transaction_one(
        self,
        partition: int,
        events: list[Event],
        epoch: int | None,
        dead: list[DeadLetterRecord],
        sequences: Sequence[Sequenced] = (),
    ) -> BatchResult:
        with self.rt.engine.begin() as conn:
            return apply_batch(conn, partition, events, epoch=epoch, dead_letters=dead, sequences=sequences)

    def _isolate(self, batch: PartitionBatch) -> BatchResult:
        """Apply events one per transaction. One that still fails (a bug, a constraint that cannot hold) is
        dead-lettered and its entity parked: its later events follow it into the dead-letter store, in order,
        until ``seqproc deadletter replay``; the other entities flow on."""
        partition, epoch = batch.partition, batch.epoch
        total = BatchResult()
        if batch.dead_letters or batch.sequences:
            # What arrived (the messages' places in their producers' sequences) is recorded first, on its own.
            what = f"partition {partition}: dead letters and sequences"
            self._retry(
                partial(self._transaction_one, partition, [], epoch, list(batch.dead_letters), batch.sequences),
                what,
            )
        for event in batch.events:
            try:
                one = self._retry(
                    partial(self._transaction_one, partition, [event], epoch, []), f"partition {partition}: {event.key}"
                )
            except (PartitionFenced, StopRetrying):
                raise
            except Exception as error:
                if isinstance(event, Replay):
                    # A replay fails only through the dead letters it brought back (the cause is not fixed yet):
                    # they stay where they are, in order, and the key stays parked. Dead-lettering the replay
                    # itself would leave a letter that no later replay clears.
                    log_event(
                        logger,
                        logging.ERROR,
                        outcome="replay_failed",
                        partition=partition,
                        key=event.entity_key,
                        idempotency_key=event.key,
                        type=event.type,
                        error=f"the key stays parked: {error}",
                    )
                    total.add(BatchResult(outcomes=[REPLAY_FAILED], rejected=1))
                    continue
                log_event(
                    logger,
                    logging.ERROR,
                    outcome="parking",
                    partition=partition,
                    key=event.entity_key,
                    idempotency_key=event.key,
                    type=event.type,
                    error=f"failed for good: {error}",
                )
                record = self._retry(
                    partial(self._park, partition, epoch, event, error), f"partition {partition}: park"
                )
                one = BatchResult(outcomes=[dead_lettered(record.error)], rejected=1)
            total.add(one)
        return total

    def _park(self, partition: int, epoch: int | None, event: Event, error: BaseException) -> DeadLetterRecord:
        with self.rt.engine.begin() as conn:
            return park(conn, partition, epoch, event, error)

    def _retry(self, attempt: Callable[[], T], what: str) -> T:
        return retry_in_place(
            attempt, what=what, backoff_max_s=self.rt.settings.retry_backoff_max_s, should_stop=should_stop
        )

    def _store_dead_letters_only(self, dead: list[DeadLetterRecord]) -> None:
        if dead:
            self._retry(partial(self._write_dead_letters, dead), "store dead letters")

    def _write_dead_letters(self, dead: list[DeadLetterRecord]) -> None:
        with self.rt.engine.begin() as conn:
            store_dead_letters(conn, dead)

    # -- after commit -----------------------------------------------------------------------------------------
    def _report(
        self,
        partition: int,
        events: Sequence[Event],
        outcomes: Sequence[Outcome],
        dead_letters: Sequence[DeadLetterRecord] = (),
    ) -> None:
        """Log and publish the events' outcomes. ``dead_letters``: what the batch stored on arrival; logged already
        (the store's log line), their events' outcomes go out with the others, in the same call: no round trip of
        their own."""
        for event, outcome in zip(events, outcomes, strict=True):
            if outcome.status != "applied":
                dead = outcome.reason in DEAD_LETTER_REASONS
                log_event(
                    logger,
                    logging.WARNING if dead else logging.INFO,
                    outcome="dead_lettered" if dead else outcome.status,
                    partition=partition,
                    key=event.entity_key,
                    idempotency_key=event.key,
                    type=event.type,
                    reason=outcome.reason,
                    first=outcome.first.status if outcome.first is not None else None,
                )
        pairs = [(str(event.id), outcome) for event, outcome in zip(events, outcomes, strict=True)]
        if dead_letters:
            # First: should an id come twice, the outcome of an event applied under it wins (put_many keeps the last).
            pairs[:0] = dead_letter_outcomes(dead_letters)
        notices = notices_of(events, outcomes)
        settings = self.rt.settings
        self._publish_outcomes(
            partition, pairs, Notices(notices, settings.notify_ttl_s, settings.notify_max) if notices else None
        )

    def _publish_outcomes(
        self, partition: int | None, pairs: list[tuple[str, Outcome]], notices: Notices | None = None
    ) -> None:
        """Publish the outcomes before acking. The result backend unreachable (a restart, a failover): retry in
        place, so that every waiter gets its outcome; shutting down meanwhile, the messages go back unacked and
        their redelivery reports ``duplicate`` with the first outcome (the ledger has it)."""
        try:
            retry_in_place(
                partial(self.rt.outcomes.put_many, pairs, notices),
                what=f"partition {partition}: publish {len(pairs)} outcome(s)"
                if partition is not None
                else f"publish {len(pairs)} outcome(s) of dead letters",
                backoff_max_s=self.rt.settings.retry_backoff_max_s,
                should_stop=should_stop,
                transient=_redis_unreachable,
            )
        except StopRetrying:
            raise
        except Exception:
            # Not the connection: a bug. The ledger holds the outcomes; only waiters miss them (they time out with
            # a clear error); holding the partition for it would stop every later event.
            logger.exception("partition %s: could not publish %d outcome(s)", partition, len(pairs))

    def give_back_partition(self, partition: int) -> None:
        """Return the held messages of ``partition`` (its lease was lost) to the head of its queue, in order."""
        mine = [item for item in self.buffer if item.decoded.partition == partition]
        if mine:
            self.buffer = [item for item in self.buffer if item.decoded.partition != partition]
            self.events_held = sum(len(item.decoded.events) for item in self.buffer)
            self._give_back(mine)

    def _ack(self, items: list[Held]) -> None:
        """Ack every message of the batch; on Redis in one pipelined round trip instead of one per message."""
        fetched = [item for item in items if isinstance(item.message, Fetched)]
        if fetched:
            try:
                settled = settled_by_key((item.message.queue, item.decoded.events) for item in fetched)
                fetched[0].message.channel.ack_fetched([item.message for item in fetched], settled)
            except Exception:
                # Committed already: a redelivered copy is reported as a duplicate, not applied again.
                logger.warning("could not ack %d message(s) (committed; a redelivery is a duplicate)", len(fetched))
            items = [item for item in items if not isinstance(item.message, Fetched)]
            if not items:
                return
        try:
            acked = ack_many([item.message for item in items])
        except Exception:
            logger.warning("batched ack failed; acking one by one", exc_info=True)
            acked = 0
        for item in items[acked:]:
            try:
                item.message.ack()
            except Exception:
                # Committed already: a redelivered copy is reported as a duplicate, not applied again.
                logger.warning(
                    "could not ack message %s (committed; a redelivery will be a duplicate)",
                    item.decoded.task_id,
                    exc_info=True,
                )

    def _give_back(self, items: list[Held]) -> None:
        """Return unapplied messages to the head of their queue, oldest next in line, then release them here."""
        fetched = [item.message for item in items if isinstance(item.message, Fetched)]
        if fetched:
            try:
                fetched[0].channel.give_back_fetched(fetched)
            except Exception:
                logger.warning("could not give back %d message(s); the visibility timeout will", len(fetched))
            items = [item for item in items if not isinstance(item.message, Fetched)]
        for item in reversed(items):
            message = item.message
            qos = getattr(getattr(message, "channel", None), "qos", None)
            try:
                if qos is not None and hasattr(qos, "restore_by_tag"):
                    qos.restore_by_tag(message.delivery_tag, leftmost=False, queue=message.delivery_info["routing_key"])
                    message.ack()  # only frees the prefetch slot: the restore already removed it from unacked
                else:
                    message.reject(requeue=True)
            except Exception:
                logger.warning(
                    "could not give back message %s; the visibility timeout will",
                    item.decoded.task_id,
                    exc_info=True,
                )

    def _stop_consuming(self, partition: int) -> None:
        if self.consumer is not None:
            try:
                self.consumer.cancel_task_queue(queue_name(partition))
            except Exception:
                logger.warning("could not stop consuming %s", queue_name(partition), exc_info=True)


def _redis_unreachable(error: BaseException) -> bool:
    return isinstance(error, redis.ConnectionError | redis.TimeoutError)


def should_stop() -> bool:
    """True once the worker is shutting down: a retry loop stops and gives its messages back."""
    return bool(worker_state.should_stop or worker_state.should_terminate)


def ack_many(messages: list[Any]) -> int:
    """Ack ``messages`` of one Redis channel in one pipeline (kombu's QoS.ack sends one per message).

    Returns how many were acked this way: 0 when the transport is not Redis (then ack each the usual way).
    """
    if not messages:
        return 0
    channel = messages[0].channel
    qos = getattr(channel, "qos", None)
    if qos is None or not hasattr(qos, "_remove_from_indices") or any(m.channel is not channel for m in messages):
        return 0
    with qos.pipe_or_acquire() as pipe:
        for message in messages:
            qos._remove_from_indices(message.delivery_tag, pipe)
        pipe.execute()
    for message in messages:
        # The rest of what Message.ack does: the base QoS bookkeeping (frees the prefetch slot), the state.
        VirtualQoS.ack(qos, message.delivery_tag)
        message._state = "ACK"
    return len(messages)


#: Longest dead-letter error an outcome carries (the dead letter keeps all of it).
MAX_OUTCOME_ERROR_CHARS = 2000


def dead_lettered(error: str) -> Outcome:
    """The outcome of an event put in the dead-letter store, with the letter's error: it failed for good (its
    entity is parked behind it), or could not be taken on arrival (an unknown type, another partition, a field
    that fails the schema)."""
    return Outcome("rejected", "dead_lettered", error=error[:MAX_OUTCOME_ERROR_CHARS])


def dead_letter_outcomes(records: Sequence[DeadLetterRecord]) -> list[tuple[str, Outcome]]:
    """``(event id, outcome)`` of every event of ``records`` whose id could be read (see :mod:`.decode`)."""
    return [(event_id, dead_lettered(record.error)) for record in records for event_id in record.event_ids]


#: The outcome of a replay whose dead letters failed again: they stay dead letters, the key stays parked.
REPLAY_FAILED = Outcome("rejected", "replay_failed")
