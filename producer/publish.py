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

import logging
import math
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
from seqproc.models.clients import redis_client, wait_timeout_ms
from seqproc.models.envelope import envelope_of_json
from seqproc.models.errors import PartitionCountMismatch, PublishError, first_line
from seqproc.models.events import Event
from seqproc.models.outcomes import OutcomeStore, outcome_store
from seqproc.models.partition_count import BrokerPartitionCount
from seqproc.models.pending import event_texts, hold_args
from seqproc.models.resp import command, pack_texts
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
    NoReply,
    deadline_of,
    no_reply_in_time,
)
from seqproc.producer.coalesce import Coalescer
from seqproc.producer.marks import MarkKeeper
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
        #: seqproc's own Redis transport: push the messages directly (see producer.envelope).
        self._redis: redis.Redis | None = None
        #: The socket's waits: the transport's, never past the publish timeout (a call with less time left bounds
        #: them further, see ``_bound``).
        self._connect_timeout_s = self._timeout_s = settings.publish_timeout_s
        #: A Redis Cluster (``redis+cluster://``): one push per partition, pipelined per node by redis-py's client.
        self._cluster = is_cluster_url(settings.broker_url)
        self.partition_count = BrokerPartitionCount(settings.partitions)
        #: The pid that read the partition count on a cluster (each process reads it once).
        self._count_read_by: int | None = None
        if self.app.conf.broker_transport in SEQPROC_TRANSPORTS:
            options = self.app.conf.broker_transport_options
            self._connect_timeout_s = min(options["socket_connect_timeout"], settings.publish_timeout_s)
            self._timeout_s = min(options["socket_timeout"], settings.publish_timeout_s)
            self._redis = redis_client(
                settings.broker_url,
                sentinel_master=settings.sentinel_master,
                connect_timeout_s=self._connect_timeout_s,
                timeout_s=self._timeout_s,
                socket_keepalive=options["socket_keepalive"],
                health_check_interval=options["health_check_interval"],
                protocol=2,  # push_on reads integer replies itself: no RESP3 push frames on this connection
                # Each call retries by its own deadline (``send``); redis-py's retries (ten, with backoff) would
                # come on top of it, each reconnecting, unbounded by it.
                retry=Retry(NoBackoff(), 0),
                # Every connection, as it opens, checks the partition count (and is named, so that `seqproc
                # partitions set` can close it: the count is read again on reconnecting).
                client_name=PRODUCER_CLIENT_NAME,
                # (On a cluster the count's key lives on one node: read once per process, see ``_push_on_cluster``.)
                redis_connect_func=None if self._cluster else self.partition_count.on_connect,
            )
        self._connection_errors: tuple[type[BaseException], ...] = (
            *self.app.connection_for_write().connection_errors,
            redis.ConnectionError,
            redis.TimeoutError,
            ConnectionError,
            OSError,
            kombu.exceptions.OperationalError,  # what kombu raises when it cannot connect, whatever the transport
        )
        self._coalescer = Coalescer(self.send, linger_s=settings.linger_ms / 1000.0)
        #: Marks the partitions after the broker's master changed, for what no later message would reveal
        #: (:mod:`producer.marks`; seqproc's transport on one Redis or Sentinel: a cluster's shards each have a
        #: master of their own, which the keeper does not follow yet).
        self.marks: MarkKeeper | None = None
        if self._redis is not None and not self._cluster and settings.sequence_mark_s > 0:
            self.marks = MarkKeeper(self._redis, self.push_marks, interval_s=settings.sequence_mark_s)
        #: Numbers this process's events per partition, for the workers' loss detection (seqproc's transport only).
        self.sequencer = new_sequencer(self.marks)
        #: The connection pushes go out on, with the pid that opened it (see ``_connection``).
        self._held: tuple[int, Any] | None = None
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
        try:
            self._coalescer.submit(events, deadline_of(self.settings, timeout_s))
        except PublishError as error:
            raise error.for_receipts([self.receipt(event) for event in events]) from error
        return [self.receipt(event) for event in events]

    def receipt(self, event: Event) -> Receipt:
        return Receipt.of(event, self.partition_of(event), self.outcomes)

    def send(self, events: Sequence[Event], deadline: float | None = None) -> None:
        """Publish ``events`` now: one message per partition (split at ``max_events_per_message``), every message
        in one pipelined round trip. Order is kept within each partition. A broker that cannot be reached is tried
        again until ``deadline`` (``time.monotonic()``; default: the publish timeout from now), one that refuses
        the connection for ``publish_refused_retry_s`` at most. Raises :class:`PublishError`."""
        messages = self.messages_for(events)
        # Numbered once: a retry sends the same numbers (a copy is then a duplicate, not a gap).
        places = self.sequencer.number(messages) if self._redis is not None else None
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
                raise self.not_replicated(events, error) from error  # on the primary: sending again would copy
            except Exception as error:
                if attempts is None:
                    attempts = Attempts(self.settings, deadline)
                if self._redis is not None and not self._cluster:
                    written = isinstance(error, NoReply)
                else:
                    written = no_reply_in_time(error)
                pause_s = attempts.retry_after(error, transient=self.is_transient(error), written=written)
                if pause_s is None:
                    if places is not None and not attempts.maybe_sent:
                        self.sequencer.give_back(messages, places)
                    raise self.not_sent(events, error, maybe_sent=attempts.maybe_sent) from error
                time.sleep(pause_s)

    def messages_for(self, events: Sequence[Event]) -> list[tuple[int, Sequence[Event]]]:
        """``(partition, events)`` per message: one per partition, split at ``max_events_per_message``, each
        partition's events in their order (``seqproc.aio`` sends the same messages)."""
        by_partition: dict[int, list[Event]] = {}
        for event in events:
            by_partition.setdefault(self.partition_of(event), []).append(event)
        limit = self.settings.max_events_per_message
        return [
            (partition, group[start : start + limit])
            for partition, group in by_partition.items()
            for start in range(0, len(group), limit)
        ]

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
        if self._redis is not None and self._cluster:
            self._push_on_cluster(self._redis, messages, places)
        elif self._redis is not None:
            self._push(self._redis, messages, remaining_s, places)
        else:
            self._publish(messages)
        events = sum(len(group) for _, group in messages)
        self.sent_messages += len(messages)  # only a coalescer's leader sends: no concurrent update
        self.sent_events += events
        logger.debug("sent %d message(s), %d event(s)", len(messages), events)

    def _push(
        self,
        client: redis.Redis,
        messages: Sequence[tuple[int, Sequence[Event]]],
        remaining_s: float = math.inf,
        places: Sequence[Place] | None = None,
    ) -> None:
        """What kombu's Redis transport does for a publish to the default exchange (an LPUSH onto the queue's
        list) plus seqproc's bell, for every message: one script call, on a connection held for the sends (the
        client's pool, retry and pipeline layers cost more CPU than the command itself). Its socket waits no
        longer than ``remaining_s``."""
        command = pack_push(*push_parts(messages, self.settings.pending_ttl_s, places))
        with self._push_lock:
            connection = self._connection(client)
            bound = remaining_s < self._timeout_s - BOUND_SLACK_S
            if bound:
                self._bound(connection, remaining_s)
            try:
                try:
                    push_on(connection, command)
                except redis.exceptions.NoScriptError:
                    connection.send_command("SCRIPT", "LOAD", PUSH_AND_RING)
                    connection.read_response()
                    push_on(connection, command)
                if self.settings.publish_durability == "replica":
                    wait_for_replica(connection, min(remaining_s, self._timeout_s))
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection.disconnect()  # the next send connects again (a reply half read must not be reused)
                raise
            finally:
                if bound:
                    self._bound(connection, None)

    def push_marks(self, marks: Sequence[tuple[int, Place]]) -> None:
        """Push a mark (a message with no event, ``producer.marks``) onto each partition's queue: ``(partition,
        place)`` pairs, in one round trip, on a connection of their own (not the one the sends go out on)."""
        if self._redis is None or not marks:
            return
        pipe = self._redis.pipeline(transaction=False)
        stage_messages(pipe, [(partition, ()) for partition, _ in marks], 0, [place for _, place in marks])
        pipe.execute()

    def _push_on_cluster(
        self, client: Any, messages: Sequence[tuple[int, Sequence[Event]]], places: Sequence[Place] | None
    ) -> None:
        """On a Redis Cluster: one push script call per message (a script touches one slot: its queue's), pipelined
        per node; redis-py's cluster client sends each to the primary of its slot and follows ``MOVED``/``ASK``."""
        self.check_partition_count(client)
        pipe = client.pipeline(transaction=False)
        for n, message in enumerate(messages):
            stage_messages(pipe, [message], self.settings.pending_ttl_s, None if places is None else [places[n]])
        pipe.execute()

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

    def _bound(self, connection: Any, seconds: float | None) -> None:
        """Make ``connection``'s waits (connecting, and the replies on its socket) last ``seconds`` at most, or
        (None) what they were."""
        connect_s, read_s = self._connect_timeout_s, self._timeout_s
        if seconds is not None:
            connect_s, read_s = max(min(connect_s, seconds), 0.001), max(min(read_s, seconds), 0.001)
        connection.socket_connect_timeout = connect_s
        connection.socket_timeout = read_s
        if connection._sock is not None:
            connection._sock.settimeout(read_s)

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
        if self._redis is not None and self._cluster:
            self.check_partition_count(self._redis)
        elif self._redis is not None:
            with self._push_lock:
                connection = self._connection(self._redis)
                self._bound(connection, remaining_s)
                try:
                    _socket_of(connection)
                finally:
                    self._bound(connection, None)
        else:
            with self.app.producer_or_acquire() as producer:  # a pooled producer, kept connected for the sends
                producer.connection.ensure_connection(max_retries=1)

    def _connection(self, client: redis.Redis) -> Any:
        """The connection this process sends on (a new one in a forked child: the parent's socket is not ours). By
        its pid, not a fork hook: uWSGI forks its workers without running Python's (unless
        ``py-call-osafterfork``). Not connected yet: it connects on its first use, within the waits its caller
        allows (the pool's ``get_connection`` would connect at once, with the client's own timeouts)."""
        pid = os.getpid()
        if self._held is None or self._held[0] != pid:
            self._held = (pid, client.connection_pool.make_connection())
        return self._held[1]

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


class NotReplicated(Exception):
    """The primary took the push, but no replica acknowledged it within the time left (``WAIT`` said 0)."""


def wait_for_replica(connection: Any, seconds: float) -> None:
    """``WAIT 1`` on ``connection`` (right after its push): return once a replica has everything this connection
    wrote, or raise :class:`NotReplicated` after ``seconds``. The connection's socket waits at least as long."""
    timeout_ms = wait_timeout_ms(seconds)
    try:
        connection.send_command("WAIT", 1, timeout_ms)
        acked = int(connection.read_response())
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        # The push's reply came: the primary has it, whatever happens to the WAIT.
        connection.disconnect()
        raise NotReplicated(f"no answer from the primary about its replicas ({type(error).__name__})") from error
    if acked < 1:
        raise NotReplicated(f"no replica acknowledged them within {timeout_ms / 1000:g} s")


_PUSH_HEAD = pack_texts(["EVALSHA", PUSH_AND_RING_SHA])


def push_parts(
    messages: Sequence[tuple[int, Sequence[Event]]], pending_ttl_s: int, places: Sequence[Place] | None = None
) -> tuple[list[str], list[str]]:
    """The keys and arguments of the push script (``PUSH_AND_RING``) for ``messages``: each message's queue and
    bell, then the pending indexes of their keys; the number of messages, the messages, then the index entries.
    ``places``: each message's place in its producer's sequence (loss detection), written into its envelope."""
    keys: list[str] = []
    bodies: list[str] = []
    entries: list[tuple[str, str, str]] = []
    for n, (partition, group) in enumerate(messages):
        queue = queue_name(partition)
        keys += (queue, bell_key(queue))
        texts = event_texts(group)
        array = "[" + ",".join(texts) + "]"
        place = None if places is None else places[n]
        bodies.append(envelope_of_json(queue, partition, array, len(group), task_id=unique_id(), sequence=place))
        entries += (
            (pending_key(queue, event.entity_key), str(event.id), text)
            for event, text in zip(group, texts, strict=True)
        )
    pending_keys, pending_args = hold_args(pending_ttl_s, entries)
    return [*keys, *pending_keys], [str(len(bodies)), *bodies, *map(str, pending_args)]


def pack_push(keys: Sequence[str], args: Sequence[str]) -> bytes:
    """The EVALSHA of the push script for ``keys`` and ``args`` (:func:`push_parts`), in RESP: what redis-py's
    ``pack_command`` writes, without its per-argument type checks (every argument here is text)."""
    return command(3 + len(keys) + len(args), _PUSH_HEAD, pack_texts([len(keys), *keys, *args]))


def push_on(connection: Any, command: bytes) -> None:
    """Send ``command`` (:func:`pack_push`) on ``connection`` and read its reply, an integer, off the socket.

    The connection is redis-py's, speaking RESP2 (the publisher's client asks for it: no out-of-band push frames):
    redis-py connected it, authenticated, selected the database and checks its health when idle; only this
    command's round trip skips its layers (send wrappers, the reply parser), about a third of a single-event call's
    CPU on the producer's side. Anything that stops the exchange half-way (an error, a timeout, an interrupt) closes
    the connection, so that a command half sent or a reply unread never meets the next call. An error reply is
    raised as redis-py raises it (its own parser maps it: ``NoScriptError`` after a Redis restart, for the caller to
    load the script; ``BusyLoadingError``, a connection error, while Redis loads its data)."""
    _socket_of(connection)  # first: a Sentinel connection asks for the master only in connect()
    connection.check_health()
    sock = _socket_of(connection)
    try:
        sock.sendall(command)
    except BaseException:
        connection.disconnect()
        raise
    reply = b""
    try:
        reply = sock.recv(4096)
        while not reply.endswith(b"\r\n"):
            more = sock.recv(4096)
            if not more:
                raise redis.ConnectionError("the broker closed the connection before replying")
            reply += more
    except Exception as error:
        connection.disconnect()
        if reply or isinstance(error, TimeoutError):
            # A reply begun: the broker ran the push. None in time: it may run it yet (a busy or paused server
            # reads it later). Only a connection closed (or reset) before any reply means it never took it.
            raise NoReply(f"no reply to the push: {type(error).__name__}: {error}") from error
        raise
    except BaseException:
        connection.disconnect()
        raise
    kind = reply[:1]
    if kind == b":" and reply.count(b"\r\n") == 1:
        if connection.health_check_interval:
            connection.next_health_check = time.monotonic() + connection.health_check_interval
        return
    if kind == b"-" and reply.count(b"\r\n") == 1:
        refused = connection._parser.parse_error(reply[1:-2].decode("utf-8", "replace"))
        if isinstance(refused, redis.exceptions.ReadOnlyError):
            # A failover demoted this server to a replica: the push was refused (not sent). Connect again, to the
            # master the sentinels name now (redis-py's Sentinel connection does the same for its own commands).
            connection.disconnect()
            raise redis.ConnectionError("the broker is a replica now (a failover demoted it); the push was refused")
        raise refused
    connection.disconnect()
    raise redis.ConnectionError(f"unexpected reply to the push: {reply[:80]!r}")


def _socket_of(connection: Any) -> Any:
    """The socket of redis-py's ``connection``, connected (and authenticated) first if it is not."""
    if connection._sock is None:
        connection.connect()
    return connection._sock


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
