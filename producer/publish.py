"""Publishing events: one Celery message per partition carries a list of that partition's events.

The producer holds its own Celery client app (it imports nothing from ``worker``) and sends the apply task by
name. On seqproc's Redis transport it writes the message itself (:mod:`producer.envelope`: the text Celery and
kombu would write, pushed with its bell in one pipelined round trip, at half the CPU); on any other broker it goes
through kombu. A call returns once the broker has accepted the message; if the broker cannot be reached within
the call's time (:mod:`producer.attempts`) it raises :class:`PublishError`, and the event was not sent.

On Redis, each connection checks the deployment's partition count as it opens
(:class:`~seqproc.models.partition_count.BrokerPartitionCount`): with another ``SEQPROC_PARTITIONS`` a call raises
:class:`PartitionCountMismatch` and sends nothing. Nothing is checked per call.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import kombu.exceptions
import redis
from celery import Celery
from redis.backoff import NoBackoff
from redis.retry import Retry

from seqproc.models.celery import celery_config
from seqproc.models.clients import CLUSTER_NOT_NOW, redis_client, wait_timeout_ms
from seqproc.models.cluster import run_packed
from seqproc.models.envelope import envelope_of_json
from seqproc.models.errors import PartitionCountMismatch, PublishError, first_line
from seqproc.models.events import Event
from seqproc.models.outcomes import OutcomeStore, outcome_store
from seqproc.models.partition_count import BrokerPartitionCount
from seqproc.models.pending import event_json, hold_args
from seqproc.models.resp import Held, ReplyLost, pack, pack_texts
from seqproc.models.scripts import PUSH_AND_RING, PUSH_AND_RING_SHA
from seqproc.models.settings import Settings, mask_url
from seqproc.models.stamps import unique_id
from seqproc.models.transport import SEQPROC_TRANSPORTS
from seqproc.models.wire import (
    APPLY_TASK,
    PARTITION_COUNT_KEY,
    PRODUCER_CLIENT_NAME,
    bell_key,
    is_cluster_url,
    partition_for,
    pending_key,
    queue_name,
)
from seqproc.producer.attempts import (
    BOUND_SLACK_S,
    BROKER_SETTING,
    DURABILITY_SETTING,
    Attempts,
    deadline_of,
    no_reply_in_time,
)
from seqproc.producer.coalesce import Coalescer
from seqproc.producer.marks import ClusterMasters, MarkKeeper, OneMaster
from seqproc.producer.receipt import Receipt
from seqproc.producer.sequence import Place, Sequencer

logger = logging.getLogger(__name__)


def new_sequencer(marks: MarkKeeper | None) -> Sequencer:
    """A sender's numbering, whose partitions ``marks`` keeps from its first send on (None: no marks)."""
    return Sequencer(on_new_producer=marks.watch if marks is not None else None)


def client_app(settings: Settings) -> Celery:
    """A Celery app that only sends: same configuration as the workers (``seqproc.models.celery``)."""
    app = Celery("seqproc-producer", set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


class Publisher:
    """Routes events to partition queues and sends them. Thread-safe; one per settings per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = client_app(settings)
        self.outcomes: OutcomeStore = outcome_store(
            settings.result_backend, ttl_s=settings.outcome_ttl_s, sentinel_master=settings.sentinel_master
        )
        #: seqproc's own Redis transport: the messages are pushed directly (see ``_push``), on this connection (on a
        #: Redis Cluster: through the cluster's client, ``_redis``).
        self._held: Held | None = None
        #: The client the marks go out on (one Redis or Sentinel: the held connection's client, another connection;
        #: a cluster: ``_redis``).
        self._marks_client: Any = None
        #: The socket's waits: the transport's, never past the publish timeout (a call with less time left bounds
        #: them further, see ``_push``).
        self._timeout_s = settings.publish_timeout_s
        #: The broker's client (None: another transport than seqproc's, through kombu).
        self._redis: Any = None
        #: A Redis Cluster (``redis+cluster://``): one push per partition, pipelined per node by redis-py's client.
        self._cluster = is_cluster_url(settings.broker_url)
        self.partition_count = BrokerPartitionCount(settings.partitions)
        #: The pid that read the partition count on a cluster (each process reads it once).
        self._count_read_by: int | None = None
        if self.app.conf.broker_transport in SEQPROC_TRANSPORTS:
            options = self.app.conf.broker_transport_options
            self._timeout_s = min(options["socket_timeout"], settings.publish_timeout_s)
            client = redis_client(
                settings.broker_url,
                sentinel_master=settings.sentinel_master,
                connect_timeout_s=min(options["socket_connect_timeout"], settings.publish_timeout_s),
                timeout_s=self._timeout_s,
                socket_keepalive=options["socket_keepalive"],
                health_check_interval=options["health_check_interval"],
                protocol=2,  # Held.call reads integer replies itself: no RESP3 push frames on this connection
                # Each call retries by its own deadline (``send``); redis-py's retries (ten, with backoff) would
                # come on top of it, each reconnecting, unbounded by it.
                retry=Retry(NoBackoff(), 0),
                # Every connection, as it opens, checks the partition count (and is named, so that `seqproc
                # partitions set` can close it: the count is read again on reconnecting).
                client_name=PRODUCER_CLIENT_NAME,
                # (On a cluster the count's key lives on one node: read once per process, see ``_push_on_cluster``.)
                redis_connect_func=None if self._cluster else self.partition_count.on_connect,
            )
            if self._cluster:
                self._redis = client
            else:
                self._held = Held(client)
                self._marks_client = client
        self._connection_errors: tuple[type[BaseException], ...] = (
            *self.app.connection_for_write().connection_errors,
            redis.ConnectionError,
            redis.TimeoutError,
            ConnectionError,
            OSError,
            kombu.exceptions.OperationalError,  # what kombu raises when it cannot connect, whatever the transport
            # A slot moving or failing over: the push ran nowhere (a pipeline's other pushes may have: sent again,
            # their copies are duplicates).
            *(CLUSTER_NOT_NOW if self._cluster else ()),
        )
        self._coalescer: Coalescer[tuple[int, Event]] = Coalescer(self.send, linger_s=settings.linger_ms / 1000.0)
        #: Marks the partitions after the master holding them changed, for what no later message would reveal
        #: (:mod:`producer.marks`; seqproc's transport: one Redis, Sentinel's master, each primary of a cluster).
        self.marks: MarkKeeper | None = None
        if settings.sequence_mark_s > 0 and (self._redis is not None or self._marks_client is not None):
            masters = ClusterMasters(self._redis) if self._redis is not None else OneMaster(self._marks_client)
            self.marks = MarkKeeper(masters, self.push_marks, interval_s=settings.sequence_mark_s)
        #: Numbers this process's events per partition, for the workers' loss detection (seqproc's transport only).
        self.sequencer = new_sequencer(self.marks)
        #: One push (and its WAIT) at a time on the held connection.
        self._push_lock = threading.Lock()
        #: Messages and events sent so far (the benchmark reports events per message).
        self.sent_messages = 0
        self.sent_events = 0

    def partition_of(self, event: Event) -> int:
        return partition_for(event.entity_key, self.settings.partitions)

    def publish(self, events: Sequence[Event], *, timeout_s: float | None = None) -> list[Receipt]:
        """Send ``events`` and return one receipt per event, in order, once the broker holds them all.

        Concurrent calls share messages (group commit, see :mod:`producer.coalesce`); a message goes on trying for
        as long as the longest ``timeout_s`` (default ``publish_timeout_s``) of the calls it carries. Raises
        :class:`PublishError` if they could not be sent.
        """
        routed = self.route(events)  # once: the send and the receipts share it
        try:
            self._coalescer.submit(routed, deadline_of(self.settings, timeout_s))
        except PublishError as error:
            raise error.for_receipts(self._receipts(routed)) from error
        return self._receipts(routed)

    def route(self, events: Sequence[Event]) -> list[tuple[int, Event]]:
        """Each event with its partition."""
        partitions = self.settings.partitions
        return [(partition_for(event.entity_key, partitions), event) for event in events]

    def receipt(self, event: Event) -> Receipt:
        return Receipt.of(event, self.partition_of(event), self.outcomes)

    def _receipts(self, routed: Sequence[tuple[int, Event]]) -> list[Receipt]:
        return [Receipt.of(event, partition, self.outcomes) for partition, event in routed]

    def send(self, routed: Sequence[tuple[int, Event]], deadline: float | None = None) -> None:
        """Publish events now (``routed``: each with its partition, see :meth:`route`): one message per partition
        (split at ``max_events_per_message``), every message in one pipelined round trip. Order is kept within each
        partition. A broker that cannot be reached is tried again until ``deadline`` (``time.monotonic()``;
        default: the publish timeout from now), one that refuses the connection for ``publish_refused_retry_s`` at
        most. Raises :class:`PublishError`."""
        messages = self.grouped(routed)
        # Numbered once: a retry sends the same numbers (a copy is then a duplicate, not a gap).
        places = self.sequencer.number(messages) if self._held is not None or self._redis is not None else None
        attempts: Attempts | None = None  # made at the first failure: nothing to count on the common path
        while True:
            if attempts is not None:
                remaining_s = attempts.remaining_s()
            else:
                remaining_s = self.settings.publish_timeout_s if deadline is None else deadline - time.monotonic()
            try:
                self._send_messages(messages, remaining_s, places)
                if places is not None:
                    self.sequencer.sent(messages, places)
                return
            except PartitionCountMismatch:
                raise  # checked as the connection opened: nothing was sent, and a retry would not change it
            except NotReplicated as error:
                events = [event for _, event in routed]
                raise self.not_replicated(events, error) from error  # on the primary: sending again would copy
            except Exception as error:
                if attempts is None:
                    attempts = Attempts(self.settings, deadline)
                written = (
                    isinstance(error, ReplyLost) if self._held is not None else self.may_have_written(error, messages)
                )
                pause_s = attempts.retry_after(error, transient=self.is_transient(error), written=written)
                if pause_s is None:
                    if places is not None and not attempts.maybe_sent:
                        self.sequencer.give_back(messages, places)
                    events = [event for _, event in routed]
                    raise self.not_sent(events, error, maybe_sent=attempts.maybe_sent) from error
                time.sleep(pause_s)

    def messages_for(self, events: Sequence[Event]) -> list[tuple[int, Sequence[Event]]]:
        """``(partition, events)`` per message: one per partition, split at ``max_events_per_message``, each
        partition's events in their order (``seqproc.aio`` sends the same messages)."""
        return self.grouped(self.route(events))

    def grouped(self, routed: Sequence[tuple[int, Event]]) -> list[tuple[int, Sequence[Event]]]:
        """:meth:`messages_for` of events routed already."""
        if len(routed) == 1:  # a single call's event (a prefork web server's every request)
            partition, event = routed[0]
            return [(partition, [event])]
        by_partition: dict[int, list[Event]] = {}
        for partition, event in routed:
            by_partition.setdefault(partition, []).append(event)
        limit = self.settings.max_events_per_message
        return [
            (partition, group[start : start + limit])
            for partition, group in by_partition.items()
            for start in range(0, len(group), limit)
        ]

    def may_have_written(self, error: BaseException, messages: Sequence[object]) -> bool:
        """Whether a pipelined push that failed with ``error`` may have left messages on the broker: a reply that
        never came in time, or on a cluster one push of several that met a slot not served (the others ran)."""
        return no_reply_in_time(error) or (self._cluster and len(messages) > 1 and isinstance(error, CLUSTER_NOT_NOW))

    def is_transient(self, error: BaseException) -> bool:
        """The broker could not be reached: worth retrying until ``publish_timeout_s``."""
        return isinstance(error, self._connection_errors)

    def not_sent(self, events: Sequence[Event], error: BaseException, *, maybe_sent: bool = False) -> PublishError:
        """The error a call raises when its events could not be sent; ``maybe_sent``: an attempt failed after its
        message was written, so the broker may hold them."""
        url = mask_url(self.settings.broker_url)
        what = (
            f"could not send {len(events)} event(s) (first key {events[0].key!r}) to the broker at "
            f"{BROKER_SETTING}={url}: {type(error).__name__}: {first_line(error)}"
        )
        if maybe_sent:
            what += (
                "; the broker stopped answering after a message was written, so they may have been sent: send them "
                "again only with the same idempotency keys (a copy is then a duplicate)"
            )
        else:
            what += "; they were NOT sent"
        return PublishError(what, setting=BROKER_SETTING, url=url, maybe_sent=maybe_sent)

    def not_replicated(self, events: Sequence[Event], error: NotReplicated) -> PublishError:
        """The error of a send the primary took but no replica acknowledged in time (durability ``replica``)."""
        url = mask_url(self.settings.broker_url)
        return PublishError(
            f"{len(events)} event(s) (first key {events[0].key!r}) reached the broker's primary at "
            f"{BROKER_SETTING}={url}, but {error} ({DURABILITY_SETTING}=replica): they may still be applied, or be "
            "lost if the primary fails before a replica copies them; wait() on their receipts, or send them again "
            "with the same idempotency keys (a copy is then a duplicate)",
            setting=BROKER_SETTING,
            url=url,
            maybe_sent=True,
        )

    def _send_messages(
        self,
        messages: Sequence[tuple[int, Sequence[Event]]],
        remaining_s: float,
        places: Sequence[Place] | None = None,
    ) -> None:
        # A retry after a failed flush may send a message twice; the ledger makes the copy a duplicate. It never
        # reports as sent a message the broker did not accept.
        if self._held is not None:
            self._push(self._held, messages, remaining_s, places)
        elif self._redis is not None:
            self._push_on_cluster(self._redis, messages, places, remaining_s)
        else:
            self._publish(messages)
        events = sum(len(group) for _, group in messages)
        self.sent_messages += len(messages)  # only a coalescer's leader sends: no concurrent update
        self.sent_events += events
        logger.debug("sent %d message(s), %d event(s)", len(messages), events)

    def _push(
        self,
        held: Held,
        messages: Sequence[tuple[int, Sequence[Event]]],
        remaining_s: float | None = None,
        places: Sequence[Place] | None = None,
    ) -> None:
        """What kombu's Redis transport does for a publish to the default exchange (an LPUSH onto the queue's
        list) plus seqproc's bell, for every message: one script call on the held connection (the client's pool,
        retry and pipeline layers cost more CPU than the command itself). Its socket waits no longer than
        ``remaining_s``."""
        command = pack_push(*push_parts(messages, self.settings.pending_ttl_s, places))
        # A call whose time left is within a hair of the socket's own timeout leaves the socket as it is: the bound
        # costs nothing on the common path (a first attempt starts microseconds after its deadline was set).
        bound = remaining_s if remaining_s is not None and remaining_s < self._timeout_s - BOUND_SLACK_S else None
        with self._push_lock:
            held.call(command, script=PUSH_AND_RING, timeout_s=bound)
            if self.settings.publish_durability == "replica":
                seconds = self._timeout_s if remaining_s is None else min(remaining_s, self._timeout_s)
                wait_for_replica(held, seconds, bound)

    def push_marks(self, marks: Sequence[tuple[int, Place]]) -> None:
        """Push a mark (a message with no event, ``producer.marks``) onto each partition's queue: ``(partition,
        place)`` pairs, in one round trip, on a connection of their own (not the one the sends go out on)."""
        if not marks:
            return
        if self._redis is not None:  # a cluster: one script call per mark (each in its queue's slot), per node
            pipe = self._redis.pipeline(transaction=False)
            for partition, place in marks:
                stage_messages(pipe, [(partition, ())], 0, [place])
        elif self._marks_client is not None:
            pipe = self._marks_client.pipeline(transaction=False)
            stage_messages(pipe, [(partition, ()) for partition, _ in marks], 0, [place for _, place in marks])
        else:
            return
        pipe.execute()

    def _push_on_cluster(
        self,
        client: Any,
        messages: Sequence[tuple[int, Sequence[Event]]],
        places: Sequence[Place] | None,
        remaining_s: float | None = None,
    ) -> None:
        """On a Redis Cluster: one push script call per message (a script touches one slot: its queue's), pipelined
        per node; redis-py's cluster client sends each to the primary of its slot and follows ``MOVED``/``ASK``.
        Durability ``replica``: :meth:`_push_on_cluster_and_wait`."""
        self.check_partition_count(client)
        if self.settings.publish_durability == "replica":
            seconds = self._timeout_s if remaining_s is None else min(remaining_s, self._timeout_s)
            self._push_on_cluster_and_wait(client, messages, places, seconds)
            return
        pipe = client.pipeline(transaction=False)
        for n, message in enumerate(messages):
            stage_messages(pipe, [message], self.settings.pending_ttl_s, None if places is None else [places[n]])
        pipe.execute()

    def _push_on_cluster_and_wait(
        self,
        client: Any,
        messages: Sequence[tuple[int, Sequence[Event]]],
        places: Sequence[Place] | None,
        seconds: float,
    ) -> None:
        """Durability ``replica`` on a cluster. ``WAIT`` answers for the writes of the connection it is sent on, on
        the node it reaches: so per node, the pushes of the messages whose slots it serves and then ``WAIT 1`` go
        out on one connection of that node, and the call returns once every node's replica acknowledged them
        (:class:`NotReplicated` after ``seconds`` otherwise). A push redirected ran nothing: after ``MOVED`` (a
        failover, a migration done) it goes again to the slot's primary as the map says after reading it again,
        after ``ASK`` (a migration under way) to the node named, after ``ASKING``, and waits there."""
        ttl_s = self.settings.pending_ttl_s
        todo: list[tuple[str, bytes, tuple[str, int] | None]] = []
        for n, (partition, group) in enumerate(messages):
            keys, args = push_parts([(partition, group)], ttl_s, None if places is None else [places[n]])
            todo.append((queue_keys(partition)[0], pack("EVAL", PUSH_AND_RING, len(keys), *keys, *args), None))
        wait = pack("WAIT", 1, wait_timeout_ms(seconds))
        pushed = 0
        for _ in range(CLUSTER_REDIRECTS_MAX):
            by_node: dict[str, tuple[Any, list[tuple[str, bytes, tuple[str, int] | None]]]] = {}
            for item in todo:
                queue, _, asked = item
                node = client.get_node(*asked) if asked else client.get_node_from_key(queue)
                if node is None:  # a node the map does not know yet (ASK to a new one)
                    client.nodes_manager.initialize()
                    node = client.get_node(*asked) if asked else client.get_node_from_key(queue)
                by_node.setdefault(node.name, (node, []))[1].append(item)
            todo = []
            for node, items in by_node.values():
                packed = b"".join((_ASKING if asked else b"") + push for _, push, asked in items) + wait
                count = sum(2 if asked else 1 for _, _, asked in items) + 1
                pool = client.get_redis_connection(node).connection_pool
                connection = pool.get_connection()
                try:
                    replies = run_packed(connection, packed, count)
                except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
                    if not pushed:
                        raise
                    # Another primary's pushes ran: a failure now leaves the call's messages partly sent.
                    raise redis.exceptions.ClusterError(f"{node.name}: {error}") from error
                finally:
                    pool.release(connection)
                at = list(itertools.accumulate((2 if asked else 1 for _, _, asked in items), initial=-1))[1:]
                ran = 0
                for item, reply in zip(items, [replies[n] for n in at], strict=True):  # (not ASKING's +OK)
                    if isinstance(reply, redis.exceptions.AskError):
                        todo.append((item[0], item[1], (reply.host, reply.port)))
                    elif isinstance(reply, redis.exceptions.MovedError | redis.exceptions.TryAgainError):
                        todo.append((item[0], item[1], None))
                    elif isinstance(reply, redis.ResponseError):  # CLUSTERDOWN (a failover): retried; any other: raised
                        raise reply
                    else:
                        ran += 1
                pushed += ran
                acked = replies[-1]
                if ran and (not isinstance(acked, int) or acked < 1):
                    raise NotReplicated(
                        f"no replica of the primary at {node.name} acknowledged them within {seconds:g} s"
                    )
            if not todo:
                return
            if any(asked is None for _, _, asked in todo):
                client.nodes_manager.initialize()  # MOVED: the slot map changed
        raise redis.exceptions.TryAgainError(
            f"pushes still redirected after {CLUSTER_REDIRECTS_MAX} tries (a migration)"
        )

    def partition_count_read(self) -> bool:
        return self._count_read_by == os.getpid()

    def check_partition_count(self, client: Any) -> None:
        """The deployment's partition count, read once per process on a cluster (raises on a mismatch)."""
        if self.partition_count_read():
            return
        error = self.partition_count.verify(client.get(PARTITION_COUNT_KEY))
        if error is not None:
            raise error
        self._count_read_by = os.getpid()

    def connect(self, *, timeout_s: float | None = None) -> None:
        """Open this process's connection to the broker now (see ``seqproc.connect``), within ``timeout_s`` (default
        the publish timeout; a refused connection ``publish_refused_retry_s``)."""
        attempts = Attempts(self.settings, deadline_of(self.settings, timeout_s))
        while True:
            try:
                self._connect_once(attempts.remaining_s())
                return
            except Exception as error:
                if not self.is_transient(error):
                    raise
                pause_s = attempts.retry_after(error, transient=True, written=False)
                if pause_s is None:
                    url = mask_url(self.settings.broker_url)
                    raise PublishError(
                        f"could not connect to the broker at {BROKER_SETTING}={url}: "
                        f"{type(error).__name__}: {first_line(error)}",
                        setting=BROKER_SETTING,
                        url=url,
                    ) from error
                time.sleep(pause_s)

    def _connect_once(self, remaining_s: float) -> None:
        if self._held is not None:
            with self._push_lock:
                self._held.open(remaining_s)
        elif self._redis is not None:
            self.check_partition_count(self._redis)
        else:
            with self.app.producer_or_acquire() as producer:  # a pooled producer, kept connected for the sends
                producer.connection.ensure_connection(max_retries=1)

    def _publish(self, messages: Sequence[tuple[int, Sequence[Event]]]) -> None:
        """Through kombu, for any other broker (the embedded demo's memory transport)."""
        with self.app.producer_or_acquire() as amqp_producer, amqp_producer.batch():
            for partition, group in messages:
                # Celery's own protocol-2 message (what send_task builds), published to the default ("") exchange
                # with the queue's name as routing key: on Redis that is an LPUSH onto the queue's list, with no
                # binding to look up (a lost binding would divert the message to kombu's undeliverable queue) and
                # no declare per message. Short reprs for Flower instead of a saferepr() of every event.
                message = self.app.amqp.as_task_v2(
                    unique_id(),
                    APPLY_TASK,
                    (),
                    {"partition": partition, "events": [event.model_dump() for event in group]},
                    argsrepr="()",
                    kwargsrepr=f"{{'partition': {partition}, 'events': <{len(group)}>}}",
                    ignore_result=True,
                )
                amqp_producer.publish(
                    message.body,
                    exchange="",
                    routing_key=queue_name(partition),
                    serializer="json",
                    headers=message.headers,
                    declare=[],
                    retry=False,
                    **message.properties,
                )


#: How many times a durable push on a cluster follows redirections before the call retries it whole.
CLUSTER_REDIRECTS_MAX = 5
#: ``ASKING``, packed: sent right before a push that an ``ASK`` redirected (a slot being migrated).
_ASKING = pack("ASKING")


class NotReplicated(Exception):
    """The primary took the push, but no replica acknowledged it within the time left (``WAIT`` said 0)."""


def wait_for_replica(held: Held, seconds: float, bound_s: float | None = None) -> None:
    """``WAIT 1`` on ``held`` (right after its push): return once a replica has everything its connection wrote, or
    raise :class:`NotReplicated` after ``seconds``. The connection's socket waits at least as long (``bound_s``, if
    given, at most)."""
    timeout_ms = wait_timeout_ms(seconds)
    try:
        acked = held.call(pack("WAIT", 1, timeout_ms), timeout_s=bound_s)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        # The push's reply came: the primary has it, whatever happens to the WAIT.
        raise NotReplicated(f"no answer from the primary about its replicas ({type(error).__name__})") from error
    if acked < 1:
        raise NotReplicated(f"no replica acknowledged them within {timeout_ms / 1000:g} s")


#: EVALSHA and the push script's SHA-1, packed once.
_PUSH_HEAD = pack_texts(["EVALSHA", PUSH_AND_RING_SHA])
#: Per partition: its queue's name, and the queue and its bell as the push script's keys (see ``queue_keys``).
_QUEUE_KEYS: dict[int, tuple[str, bytes, bytes]] = {}


def queue_keys(partition: int) -> tuple[str, bytes, bytes]:
    """``partition``'s queue name, then its queue and its bell as the push takes them (made once per partition)."""
    keys = _QUEUE_KEYS.get(partition)
    if keys is None:
        queue = queue_name(partition)
        keys = _QUEUE_KEYS[partition] = (queue, queue.encode(), bell_key(queue).encode())
    return keys


def push_parts(
    messages: Sequence[tuple[int, Sequence[Event]]], pending_ttl_s: int, places: Sequence[Place] | None = None
) -> tuple[list[bytes], list[bytes]]:
    """The keys and arguments of the push script (``PUSH_AND_RING``) for ``messages``: each message's queue and
    bell, then the pending indexes of their keys; the number of messages, the messages, then the index entries.
    ``places``: each message's place in its producer's sequence (loss detection), written into its envelope."""
    keys: list[bytes] = []
    bodies: list[bytes] = [b"%d" % len(messages)]
    entries: list[tuple[str, bytes, bytes]] = []
    for n, (partition, group) in enumerate(messages):
        queue, queue_key, bell = queue_keys(partition)
        keys += (queue_key, bell)
        texts = [event_json(event) for event in group]
        array = b"[" + b",".join(texts) + b"]"
        place = None if places is None else places[n]
        body = envelope_of_json(queue, partition, array.decode(), len(group), task_id=unique_id(), sequence=place)
        bodies.append(body.encode())
        if pending_ttl_s:
            entries += (
                (pending_key(queue, e.entity_key), str(e.id).encode(), t) for e, t in zip(group, texts, strict=True)
            )
    if not entries:
        return keys, bodies
    pending_keys, pending_args = hold_args(pending_ttl_s, entries)
    return keys + [key.encode() for key in pending_keys], bodies + pending_args


def pack_push(keys: Sequence[bytes], args: Sequence[bytes]) -> bytes:
    """The EVALSHA of the push script for ``keys`` and ``args`` (:func:`push_parts`), in RESP: what redis-py's
    ``pack_command`` writes, without its per-argument type checks (every argument here is bytes)."""
    return b"".join(
        [
            b"*%d\r\n" % (3 + len(keys) + len(args)),
            _PUSH_HEAD,
            b"$%d\r\n%d\r\n" % (len(str(len(keys))), len(keys)),
            *[b"$%d\r\n%s\r\n" % (len(part), part) for part in keys],
            *[b"$%d\r\n%s\r\n" % (len(part), part) for part in args],
        ]
    )


def stage_messages(
    pipe: Any,
    messages: Sequence[tuple[int, Sequence[Event]]],
    pending_ttl_s: int,
    places: Sequence[Place] | None = None,
) -> None:
    """Queue the push script's call for ``messages`` on ``pipe``: a redis-py pipeline, plain or asyncio (both
    buffer the commands until ``execute``). By EVAL: Redis caches the script by its digest, and a pipeline's EVALSHA
    would need a round trip of its own to load it after a restart."""
    keys, args = push_parts(messages, pending_ttl_s, places)
    pipe.execute_command("EVAL", PUSH_AND_RING, len(keys), *keys, *args)


_PUBLISHERS: dict[Settings, Publisher] = {}
_PUBLISHERS_LOCK = threading.Lock()
_last: tuple[Settings, Publisher] | None = None


def publisher_for(settings: Settings) -> Publisher:
    """The publisher of ``settings``, one per process. The last one is found without a lock or a hash."""
    global _last
    last = _last
    if last is not None and last[0] is settings:
        return last[1]
    with _PUBLISHERS_LOCK:
        publisher = _PUBLISHERS.get(settings)
        if publisher is None:
            publisher = _PUBLISHERS[settings] = Publisher(settings)
        _last = (settings, publisher)
        return publisher
