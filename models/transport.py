"""The Redis transport seqproc uses: kombu's, with a fetch that cannot lose a message, and one client per channel.

**Reliable fetch.** kombu's Redis transport takes a message with ``BRPOP`` and records it in its ``unacked`` hash
afterwards, from the client (``QoS.append``). A worker killed in between (and kombu keeps a ``BRPOP`` outstanding
while a batch is being applied, so the message can sit popped in the socket buffer for a while) loses that message
for good: it is in no list and in no hash (celery/kombu#305, celery/celery#4354). Here a message leaves its queue
only inside a Lua script that, in the same atomic step, records it in ``unacked`` and ``unacked_index``, exactly as
kombu's QoS would. At every instant a message is in its queue or in ``unacked``; kombu's ack, reject, visibility
restore and our takeover restore all keep working on those two structures unchanged.

**Fenced fetch.** A worker names its owner token (transport option ``fetch_owner``): the script then takes messages
only from queues whose fence (``seqproc:lease:<queue>``) holds that token, in the same atomic step. The fence is an
auto worker's lease (``--partitions auto``), or a fixed worker's claim (``--partitions 0-7``: set right after the
claim raised the epochs, ``worker.ownership.static``). A worker taken over, or paused between deciding to fetch and
fetching (SIGSTOP, a long GC, a frozen VM), can therefore never take messages that a new owner is consuming, however
long it takes to notice: it would hold newer events of a key while the new owner applies later ones, and its
give-back would put them behind. The claimer restores everything in ``unacked`` for the queue right after setting
the fence, so whatever the old owner held before is replayed first, in order.

A script cannot block, so workers wait on *bells*: with each message, the producer pushes a token onto
``seqproc.bell.<queue>`` (kept to one token); a visibility restore or a give-back rings it too. The worker blocks
with ``BRPOP`` on the bells of its queues; losing a bell costs nothing, since the messages are still in their lists,
and the wait times out every ``brpop_timeout`` (1 s) and fetches anyway. One fetch takes up to the prefetch limit's
worth of messages (at most ``FETCH_MAX``), from several queues, in one round trip; when it stops at that limit with
messages left in any of its queues, it rings a bell so that the next wait returns at once.

**A broker gone silent.** A worker's channels share its :class:`~seqproc.models.broker_watch.BrokerWatch`
(transport option ``broker_watch``): a command without a reply within the socket timeout
(``SEQPROC_BROKER_SOCKET_TIMEOUT_S``), or a wait on the bells without one within ``brpop_timeout`` plus that
(:meth:`Channel.check_responsive`, on every turn of the event loop), marks it; every channel then fails at once and
the consumer reconnects, instead of each call waiting out its own timeout on a connection gone half-open.

**One client per channel.** kombu 5.7 builds a new ``redis.Redis`` client object on every ``conn_or_acquire()``:
for each delivery, ack and event publish, ~100 microseconds apiece (PERFORMANCE-NOTES; redis-py issue 3624). A client
object holds no connection of its own (it borrows them from the channel's pool and checks the pid after a fork), so
one per channel is enough.

Selected by ``broker_transport`` (``seqproc.models.celery``) for ``redis://`` and ``rediss://`` URLs (producers and
workers alike); :class:`SentinelTransport` for ``sentinel://`` ones; ``seqproc.models.cluster``'s for
``redis+cluster://`` ones.
"""

from __future__ import annotations

import base64
import logging
import select
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from json import JSONDecoder
from json import loads as json_loads
from queue import Empty
from time import monotonic, time
from typing import Any, Protocol

import redis
from kombu.exceptions import ChannelError
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from kombu.utils.uuid import uuid
from redis import Redis
from redis.sentinel import Sentinel

from seqproc.models.broker_watch import BrokerWatch, timed_out
from seqproc.models.clients import SentinelUrl
from seqproc.models.envelope import read_own
from seqproc.models.resp import Held, ReplyLost, command, pack, pack_texts
from seqproc.models.scripts import (
    FETCH_AND_HOLD,
    FETCH_AND_HOLD_SHA,
    GIVE_BACK,
    RELEASE_OWN_LEASE,
    RESTORE_CHUNK,
    RESTORE_HELD,
)
from seqproc.models.wire import (
    APPLY_TASK,
    bell_key,
    lease_key,
    queue_name,
    unacked_index_key,
    unacked_key,
    unacked_mutex_key,
)

logger = logging.getLogger(__name__)

#: Most messages one fetch takes. The script holds Redis ~45 us per message here (it records each in ``unacked``),
#: and producers push onto the same server: 64 bounds that stall at ~3 ms, and 64 messages are thousands of events.
FETCH_MAX = 64

#: Sets of queues whose fetch command is kept packed (:meth:`Channel._fetch`); more, and the cache starts again.
FETCH_HEADS_KEPT = 256

#: Most fetches in a row, without waiting on the bells, while a backlog drains (~500 messages, a batch's worth).
DRAIN_FETCHES = 8


def ring(command: Callable[..., Any], queue: str) -> None:
    """Ring ``queue``'s bell, kept to one token, through ``command``: a pipeline's ``execute_command`` or a kombu
    publish batch's ``add`` (which calls the pipeline method of that name)."""
    bell = bell_key(queue)
    command("lpush", bell, "1")
    command("ltrim", bell, 0, 0)


@dataclass(slots=True)
class Fetched:
    """A message taken from a queue (and recorded in ``unacked`` in the same step), handed to a chunk consumer as
    it is: no kombu ``Message``, no Celery request. It answers to the attributes the worker's decoder reads."""

    queue: str
    #: The message as it was pushed (kept to give it back unchanged).
    raw: bytes
    delivery_tag: str
    headers: dict[str, Any]
    content_type: str | None
    body: Any
    channel: Any = None

    @property
    def delivery_info(self) -> dict[str, Any]:
        return {"routing_key": self.queue, "exchange": ""}


def fetched(queue: str, item: bytes) -> Fetched:
    """Read a fetched item: a kombu message (``body_encoding`` None or base64), or, for bytes that are not one,
    the minimal envelope :func:`envelope` gives them (the consumer dead-letters it)."""
    payload: Any = None
    try:
        text = item.decode("utf-8")
        own = read_own(text)
        if own is not None:  # a producer's or the relay's: only its body, task id and tag are read
            own_body, task_id, tag = own
            return Fetched(queue, item, tag, {"task": APPLY_TASK, "id": task_id}, "application/json", own_body)
        payload, end = _scan(text, 0)  # the C scanner: json.loads' own, without its per-call layers
        whole = end == len(text)
    except (UnicodeDecodeError, ValueError, StopIteration, RecursionError):
        whole = False
    if not whole or not isinstance(payload, dict) or not isinstance(payload.get("properties"), dict):
        payload = envelope(item, queue)  # whitespace around it, another encoding, or not a message at all
    properties = payload["properties"]
    body = payload.get("body")
    if properties.get("body_encoding") == "base64" and isinstance(body, str):
        body = base64.b64decode(body)
    headers = payload.get("headers")
    return Fetched(
        queue=queue,
        raw=item,
        delivery_tag=str(properties.get("delivery_tag")),
        headers=headers if isinstance(headers, dict) else {},
        content_type=payload.get("content-type"),
        body=body,
    )


#: The C scanner json.loads runs (``JSONDecoder.scan_once``: set on the instance, absent from the stubs).
_scan: Callable[[str, int], tuple[Any, int]] = getattr(JSONDecoder(), "scan_once")  # noqa: B009


class ChunkConsumer(Protocol):
    """Takes a whole fetch at once (the worker's batcher), instead of one kombu message at a time."""

    def room(self) -> int:
        """How many more messages it may hold now (its prefetch less what it holds)."""
        ...

    def deliver(self, chunk: list[Fetched], *, more: bool = False) -> None:
        """Take ``chunk`` (empty: a fetch found nothing); ``more``: the fetch stopped at its limit with messages
        left (a backlog: more at once)."""
        ...

    def filling(self) -> bool:
        """Holding a batch that is not applied yet, and not shutting down: worth fetching again at once."""
        ...

    def restore_stranded(self, channel: Channel) -> None:
        """A fetch's reply was lost (:class:`ReplyLost`): the messages it took may sit in ``unacked``, delivered to
        nobody. Holding no batch now, put what ``unacked`` holds for the queues this worker still owns back at their
        heads, in order, before anything newer is fetched (else they would come back after the visibility timeout,
        behind later events of their keys)."""
        ...

    def fetches_itself(self) -> bool:
        """Holding an open batch whose timer fetches (:meth:`Channel.fetch_now`): the channel waits on no bell."""
        ...


def fetch_keys(queue: str) -> list[str]:
    """The keys :data:`~seqproc.models.scripts.FETCH_AND_HOLD` takes for ``queue``, all in its slot."""
    return [queue, bell_key(queue), lease_key(queue), unacked_key(queue), unacked_index_key(queue)]


def held_keys(queue: str) -> list[str]:
    """``queue``, its bell, its unacked hash and index: the keys of a give-back or a restore."""
    return [queue, bell_key(queue), unacked_key(queue), unacked_index_key(queue)]


class QoS(kombu_redis.QoS):
    """kombu's ack emulation on one ``unacked`` hash and index per queue (in the queue's slot), where kombu keeps
    one of each for every queue: the queue of a tag is the routing key of its message (every message seqproc's
    fetch holds is recorded to go back to the queue it came from)."""

    # (kombu's attributes, which its stubs type narrowly or not at all.)
    channel: Any
    _delivered: Any
    _vrestore_count: int

    def append(self, message: Any, delivery_tag: str) -> None:
        # The fetch script already recorded the message in unacked, atomically with taking it: only the in-memory
        # bookkeeping is left (kombu would serialise the whole message again for a second HSET).
        VirtualQoS.append(self, message, delivery_tag)

    def _queue_of(self, delivery_tag: str) -> str | None:
        message = self._delivered.get(delivery_tag)
        return None if message is None else str(message.delivery_info["routing_key"])

    def _forget(self, delivery_tag: str) -> None:
        queue = self._queue_of(delivery_tag)
        if queue is not None:
            with self.channel.conn_or_acquire() as client:
                pipe = client.pipeline(transaction=False)
                pipe.zrem(unacked_index_key(queue), delivery_tag)
                pipe.hdel(unacked_key(queue), delivery_tag)
                pipe.execute()

    def ack(self, delivery_tag: str) -> None:
        self._forget(delivery_tag)
        VirtualQoS.ack(self, delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag)
        VirtualQoS.ack(self, delivery_tag)

    def restore_unacked(self, client: Any = None) -> None:
        # kombu's, on a channel's close: what this channel still holds, per queue, in one call each.
        by_queue: dict[str, list[str]] = {}
        for tag in list(self._delivered):
            queue = self._queue_of(tag)
            if queue is not None:
                by_queue.setdefault(queue, []).append(tag)
        with self.channel.conn_or_acquire(client) as client:
            for queue, tags in by_queue.items():
                self.restore_tags(client, queue, tags)
        self._delivered.clear()

    def restore_by_tag(self, tag: Any, client: Any = None, leftmost: bool = False, *, queue: str | None = None) -> None:
        """Put the message held under ``tag`` back in ``queue`` (default: the queue its delivery came from), at the
        consuming end (next in line) unless ``leftmost``; once, whoever else restores or acks it meanwhile."""
        tag = bytes_to_str(tag)
        queue = queue or self._queue_of(tag)
        if queue is None:
            return
        with self.channel.conn_or_acquire(client) as client:
            self.restore_tags(client, queue, [tag], leftmost=leftmost)

    @staticmethod
    def restore_tags(client: Any, queue: str, tags: Sequence[Any], *, leftmost: bool = False) -> int:
        """Put the messages held under ``tags`` (oldest first) back in ``queue``, in their order, the oldest next in
        line (at the consuming end; at the far end if ``leftmost``); each once, whoever else restores or acks it
        meanwhile. Two round trips per :data:`RESTORE_CHUNK` messages. Returns how many it put back."""
        tags = [bytes_to_str(tag) for tag in tags]
        chunks = [tags[i : i + RESTORE_CHUNK] for i in range(0, len(tags), RESTORE_CHUNK)]
        # At the consuming end, the newest chunk first: each one goes in front of the one before it.
        pushed = 0
        for chunk in chunks if leftmost else reversed(chunks):
            raws = client.hmget(unacked_key(queue), chunk)
            messages = [b"" if raw is None else redelivered(raw) for raw in raws]
            flag = "0" if leftmost else "1"
            pushed += int(client.eval(RESTORE_HELD, 4, *held_keys(queue), flag, len(chunk), *chunk, *messages))
        return pushed

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        """kombu's visibility restore, per queue this channel consumes and per partition queue (every one, with the
        ``partitions`` option): messages held longer than the visibility timeout go back to their queue, the oldest
        next in line. One look at every queue's index in one pipeline
        (per node on a cluster); a queue with messages to restore is restored by one restorer at a time (a lock
        with a token, as kombu's ``Mutex``)."""
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        ceil = time() - self.visibility_timeout
        partitions = self.channel.partitions or 0
        queues = sorted({*self.channel.active_queues, *map(queue_name, range(partitions))})
        if not queues:
            return
        with self.channel.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for queue in queues:
                pipe.zrange(unacked_index_key(queue), ceil, 0, desc=True, byscore=True, offset=num and start, num=num)
            for queue, visible in zip(queues, pipe.execute(), strict=True):
                if not visible:
                    continue
                mutex, token = unacked_mutex_key(queue), uuid()
                if not client.set(mutex, token, nx=True, ex=self.unacked_mutex_expire):
                    continue
                try:
                    # Newest first (kombu's window): each window goes in front of the older ones restored later.
                    self.restore_tags(client, queue, list(reversed(visible)))
                finally:
                    client.eval(RELEASE_OWN_LEASE, 1, mutex, token)


def redelivered(raw: bytes | str) -> bytes:
    """The message held as ``raw`` (``[message, exchange, routing_key]``, as kombu's QoS stores it), marked
    redelivered as kombu marks a message it restores."""
    payload, _exchange, _routing_key = loads(bytes_to_str(raw))
    try:
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
    except (KeyError, TypeError):
        pass
    return str(dumps(payload)).encode()


class Channel(kombu_redis.Channel):
    QoS = QoS
    #: Transport options set by whoever starts the worker (``worker.runner``), read by kombu into attributes:
    #: ``fetch_owner``: the worker's owner token; the fetch script then takes messages only from queues whose fence
    #: (lease) holds it (checked inside the script, atomically with the take). None: no check (producers, the CLI).
    #: ``fetch_filter``: may this process take messages from this queue now? An auto worker answers no for a
    #: partition as soon as it cannot prove its lease is still its own (after a pause, say), before asking Redis.
    #: ``broker_watch``: the worker process's :class:`BrokerWatch`: a command without a reply in time marks it, and
    #: every channel then fails at once until the worker has reconnected. None: each command waits its timeout.
    #: ``partitions``: the deployment's partition count (``SEQPROC_PARTITIONS``): the visibility restore looks at
    #: every partition's queue, not only those this worker consumes (kombu's one index covered every queue, so that a
    #: killed worker's messages come back even while nobody owns its partitions).
    from_transport_options = (
        *kombu_redis.Channel.from_transport_options,
        "fetch_owner",
        "fetch_filter",
        "broker_watch",
        "partitions",
    )
    fetch_owner: str | None = None
    fetch_filter: Callable[[str], bool] | None = None
    broker_watch: BrokerWatch | None = None
    partitions: int | None = None
    #: Set by the worker on its task consumer's channel: every fetch goes to it whole (see :class:`Fetched`); the
    #: messages stay in ``unacked`` until it acks them (:meth:`ack_fetched`) or gives them back.
    chunk_consumer: ChunkConsumer | None = None
    _shared_client: Any = None
    _held_connection: Held | None = None
    #: The last fetch stopped at its limit with messages left in its queues.
    fetch_left_more = False
    #: A fetch was sent and its reply lost: the chunk consumer restores what may be stranded before the next fetch.
    fetch_reply_lost = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._fetch_heads: dict[tuple[str, ...], tuple[int, bytes]] = {}
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ChannelError("seqproc's Redis transport does not support the global_keyprefix option")

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self.broker_watch is not None and not getattr(self, "_closing", False):  # (a close sends nothing)
            self.broker_watch.check()
        if self._shared_client is None:
            self._shared_client = self._create_client()  # type: ignore[attr-defined]  # kombu has it; stubs lack it
        try:
            yield self._shared_client
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._noticed(error, "a command")
            raise

    # -- publishing: ring the bell -----------------------------------------------------------------------------
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        batch = kwargs.get("_publish_batch")
        super()._put(queue, message, **kwargs)
        if batch is not None:
            ring(batch.add, queue)
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            ring(pipe.execute_command, queue)
            pipe.execute()

    def _restore(self, message: Any, leftmost: bool = False) -> None:
        # kombu's would read its one unacked hash: the message is in its queue's (see :class:`QoS`).
        qos: QoS = self.qos  # type: ignore[assignment]  # this channel's QoS class
        qos.restore_by_tag(message.delivery_tag, leftmost=leftmost, queue=message.delivery_info["routing_key"])

    # -- consuming: wait on bells, fetch with the script -------------------------------------------------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        chunk_consumer = self.chunk_consumer
        if chunk_consumer is not None and chunk_consumer.fetches_itself():
            # A batch is open: its timer fetches what arrives meanwhile (:meth:`fetch_now`), in one round trip for
            # many messages, instead of a wake-up, a fetch and a wait re-armed per message. Kombu's poller calls this
            # on every turn of the event loop; the wait is armed again once the batch is applied.
            return
        if timeout is None:
            timeout = self.brpop_timeout
        queues = self._queue_cycle.consume(len(self.active_queues))  # type: ignore[attr-defined]
        if not queues:
            return
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_command("BRPOP", *[bell_key(q) for q in queues], timeout or 0)

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors as error:  # type: ignore[attr-defined]  # not in stubs
                # Disconnect, so that the next iteration reconnects (as kombu does).
                self.client.connection.disconnect()
                self._noticed(error, "the wait on the bells")  # (read with a timeout: at a close)
                raise
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()  # type: ignore[attr-defined]  # not in stubs
        # A bell, or the wait timed out: fetch either way (a bell may have been lost with a killed worker).
        delivered = self._fetch_and_deliver()
        # Draining a backlog into a chunk consumer that is filling a batch: fetch again at once rather than through
        # another wait on the bells (a round trip and a turn of the event loop per fetch). Only until the batch is
        # applied (the event loop then gets its turn: timers, lease renewals, a shutdown), at most DRAIN_FETCHES.
        fetches = 1
        while (
            delivered
            and self.fetch_left_more
            and self.chunk_consumer is not None
            and self.chunk_consumer.filling()
            and fetches < DRAIN_FETCHES
        ):
            more = self._fetch_and_deliver()
            if not more:
                break
            delivered += more
            fetches += 1
        if delivered:
            return True
        raise Empty()

    def fetch_now(self) -> int:
        """Fetch for the chunk consumer now, from its own timer while it holds an open batch (the batcher's
        :class:`ChunkSource`); how many messages it took."""
        return self._fetch_and_deliver()

    def _get(self, queue: str) -> Any:  # type: ignore[override]  # the stubs give the abstract base a timeout
        """The synchronous path (``basic_get``, drain without an event loop): one message, fetched the safe way."""
        items = self._fetch([queue], 1)
        if not items:
            raise Empty()
        return loads(bytes_to_str(items[0][1]))

    def _fetch(self, queues: list[str], limit: int) -> list[tuple[str, bytes]]:
        key = tuple(queues)
        head = self._fetch_heads.get(key)
        if head is None:
            if len(self._fetch_heads) >= FETCH_HEADS_KEPT:
                self._fetch_heads.clear()
            # EVALSHA, the SHA-1, the number of keys and the keys, packed once per set of queues (the queue cycle
            # rotates, so a worker sees as many sets as it has queues); the arguments are packed per call.
            keys = [key for queue in queues for key in fetch_keys(queue)]
            head = self._fetch_heads[key] = (
                3 + len(keys) + 4,
                pack_texts(["EVALSHA", FETCH_AND_HOLD_SHA, len(keys), *keys]),
            )
        count, packed_keys = head
        args = pack_texts([f"{time():.6f}", limit, len(queues), self.fetch_owner or ""])
        (flat,) = self._run_held(command(count, packed_keys, args), script=FETCH_AND_HOLD)
        self.fetch_left_more = len(flat) % 2 == 1
        return [(bytes_to_str(flat[i]), flat[i + 1]) for i in range(0, len(flat) - 1, 2)]

    def _held(self) -> Held:
        """The connection the fetches and acks of this channel go through, packed by hand (:mod:`.resp`)."""
        if self._held_connection is None:
            with self.conn_or_acquire() as client:
                self._held_connection = Held(client)
        return self._held_connection

    def _run_held(self, packed: bytes, replies: int = 1, *, script: str | None = None) -> list[Any]:
        """:meth:`Held.run` on this channel's held connection, unless the broker went silent; a command that times
        out makes it so."""
        if self.broker_watch is not None:
            self.broker_watch.check()
        try:
            return self._held().run(packed, replies, script=script)
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._noticed(error, "a fetch or an ack")
            raise

    # -- a broker gone silent (:class:`BrokerWatch`) ------------------------------------------------------------
    def _noticed(self, error: BaseException, what: str) -> None:
        if self.broker_watch is not None and timed_out(error):
            self.broker_watch.mark(error, timeout_s=self.socket_timeout or 0, where=f"{what} on {self._where()}")

    def _where(self) -> str:
        client = self.connection.client
        return client.as_uri() if client is not None else "the broker"

    def check_responsive(self) -> None:
        """Raise :class:`BrokerUnresponsive` once the broker has gone silent (:class:`BrokerWatch`), which includes
        a wait on the bells that got no reply for ``brpop_timeout`` plus the socket timeout. That wait has no socket
        timeout of its own (the event loop waits for its socket to become readable, and a half-open socket never
        does), while Redis answers a ``BRPOP`` within its timeout whatever happens: a reply that late is a dead
        connection. Run on every turn of the event loop (:meth:`Transport.register_with_event_loop`): the consumer
        reconnects at the next turn after any command timed out, and within about ``brpop_timeout`` +
        ``SEQPROC_BROKER_SOCKET_TIMEOUT_S`` while idle."""
        watch = self.broker_watch
        if watch is None:
            return
        if watch.silent is None and self._in_poll and self._brpop_sent_at is not None and self.socket_timeout:
            waited = monotonic() - self._brpop_sent_at
            if waited > self.brpop_timeout + self.socket_timeout and not readable(self._in_poll):
                watch.mark(
                    TimeoutError(f"no reply in {waited:.1f} s"),
                    timeout_s=self.socket_timeout,
                    where=f"the wait on the bells on {self._where()}",
                )
        watch.check()

    def close(self) -> None:
        if self.broker_watch is not None and self.broker_watch.silent is not None:
            # kombu's close reads a pending wait's reply and deletes the auto-delete queues (the pidbox's binding) on
            # its own client: on a dead connection, a socket timeout apiece for nothing. The binding left behind
            # expires (kombu's sweep) or is bound again by the next worker of that name.
            self.auto_delete_queues.clear()
            if self._in_poll:
                self._in_poll.disconnect()
                self._in_poll = None
        super().close()  # kombu may read a pending wait's reply here, and fetch: the held connection is closed after
        if self._held_connection is not None:
            self._held_connection.close()
            self._held_connection = None

    def _fetch_and_deliver(self, only: list[str] | None = None) -> int:
        """Fetch from the queues of the cycle (``only``: those of them) for the chunk consumer, or kombu's."""
        queues = self._queue_cycle.consume(len(self.active_queues))  # type: ignore[attr-defined]
        if only is not None:
            queues = [queue for queue in queues if queue in only]
        if self.fetch_filter is not None:
            queues = [queue for queue in queues if self.fetch_filter(queue)]
        chunk_consumer = self.chunk_consumer
        if not queues:
            if chunk_consumer is not None:
                chunk_consumer.deliver([])  # nothing this worker may take: no backlog to wait for
            return 0
        if chunk_consumer is not None:
            limit = chunk_consumer.room()
        else:
            limit = self.qos.can_consume_max_estimate() if self.qos.prefetch_count else FETCH_MAX
        if not limit:
            return 0
        if self.fetch_reply_lost and chunk_consumer is not None:
            if chunk_consumer.filling():
                chunk_consumer.deliver([])  # apply the batch in hand first: then nothing of ours is held
                return 0
            chunk_consumer.restore_stranded(self)
            self.fetch_reply_lost = False
        try:
            items = self._fetch(list(queues), min(int(limit), FETCH_MAX))
        except ReplyLost:
            self.fetch_reply_lost = True
            raise
        for queue in dict.fromkeys(queue for queue, _ in items):  # the queues served go to the back of the cycle
            self._queue_cycle.rotate(queue)  # type: ignore[attr-defined]
        if chunk_consumer is not None:
            chunk = [fetched(queue, item) for queue, item in items]
            for message in chunk:
                message.channel = self
            chunk_consumer.deliver(chunk, more=self.fetch_left_more)
            return len(items)
        for queue, item in items:
            self.connection._deliver(envelope(item, queue), queue)
        return len(items)

    # -- a chunk consumer's acks and give-backs -------------------------------------------------------------------
    def ack_fetched(self, messages: list[Fetched], settled: Mapping[str, list[str]] | None = None) -> None:
        """Forget ``messages`` (applied and committed) in one round trip: what ``QoS.ack`` does per message; and the
        entries of their events in the pending indexes (``settled``: event ids by index)."""
        if not messages:
            return
        packed = b""
        commands = 0
        for queue, tags in tags_by_queue(messages).items():
            packed += pack("HDEL", unacked_key(queue), *tags) + pack("ZREM", unacked_index_key(queue), *tags)
            commands += 2
        indexes = settled or {}
        for index, event_ids in indexes.items():
            packed += pack("HDEL", index, *event_ids)
        self._run_held(packed, commands + len(indexes))

    def give_back_fetched(self, messages: list[Fetched]) -> None:
        """Put ``messages`` (oldest first) back at the head of their queues, in order, and forget them, atomically
        per queue; ring the queues' bells."""
        if not messages:
            return
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for queue, held in by_queue(messages).items():
                raws = [message.raw for message in held]
                tags = [message.delivery_tag for message in held]
                pipe.execute_command("EVAL", GIVE_BACK, 4, *held_keys(queue), len(held), *raws, *tags)
            pipe.execute()


def readable(connection: Any) -> bool:
    """A reply (or a close) waits on ``connection``'s socket, unread: not silent, only not served yet."""
    sock = getattr(connection, "_sock", None)
    if sock is None:
        return True  # disconnected meanwhile: the next turn connects again
    return bool(select.select([sock], [], [], 0)[0])


def by_queue(messages: list[Fetched]) -> dict[str, list[Fetched]]:
    """``messages`` by queue, each queue's in their order."""
    grouped: dict[str, list[Fetched]] = {}
    for message in messages:
        grouped.setdefault(message.queue, []).append(message)
    return grouped


def tags_by_queue(messages: list[Fetched]) -> dict[str, list[str]]:
    return {queue: [m.delivery_tag for m in held] for queue, held in by_queue(messages).items()}


def envelope(item: bytes, queue: str) -> Any:
    """The kombu message in ``item``; for bytes that are not one (pushed onto the list by something else), a minimal
    envelope without a task header around them, so that the consumer dead-letters them instead of crashing."""
    try:
        payload = json_loads(item)  # C json: kombu's loads adds object hooks our messages never need
        if isinstance(payload, dict) and isinstance(payload.get("properties"), dict):
            return payload
    except (ValueError, UnicodeDecodeError, RecursionError):
        pass
    logger.error(
        "queue %s: an item that is not a kombu message (%d bytes); handing it on to be dead-lettered", queue, len(item)
    )
    return {
        "body": base64.b64encode(item).decode("ascii"),
        "content-type": "application/octet-stream",
        "content-encoding": "binary",
        "headers": {},
        "properties": {
            "body_encoding": "base64",
            "delivery_tag": uuid(),
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }


class Transport(kombu_redis.Transport):
    Channel = Channel

    def register_with_event_loop(self, connection: Any, loop: Any) -> None:
        super().register_with_event_loop(connection, loop)
        cycle: Any = self.cycle

        def check_responsive() -> None:
            # A connection error raised here ends Celery's event loop; the consumer then reconnects.
            for channel in list(cycle._channels):
                if isinstance(channel, Channel):
                    channel.check_responsive()

        loop.on_tick.add(check_responsive)


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """seqproc's channel on the master that Sentinel names (kombu's ``sentinel://`` form and ``master_name``
    option): every connection asks the sentinels for the master as it opens, and one that meets a demoted master
    (``READONLY``) closes and asks again; the fetch, the bells and the fences are the same.

    The sentinels come from the ``sentinels`` transport option (the whole ``sentinel://...;sentinel://.../db``
    URL), not from the connection's failover alternates: Celery is given the first sentinel's URL only
    (``seqproc.models.celery``), because kombu, switching to an alternate URL after a connection error, re-reads
    the transport from its scheme and would carry on with kombu's stock Sentinel transport (no fenced fetch)."""

    from_transport_options = (
        *Channel.from_transport_options,
        *(n for n in kombu_redis.SentinelChannel.from_transport_options if n not in Channel.from_transport_options),
        "sentinels",
    )
    sentinels: str | None = None
    master_name: str | None = None

    def _sentinel_managed_pool(self, asynchronous: bool = False) -> Any:
        if not self.sentinels:
            return super()._sentinel_managed_pool(asynchronous)  # type: ignore[misc]  # not in the stubs
        if not self.master_name:
            raise ValueError("the 'master_name' transport option must be given (SEQPROC_SENTINEL_MASTER)")
        params = self._connparams(asynchronous)  # type: ignore[attr-defined]  # kombu has it; the stubs lack it
        params.pop("host", None)
        params.pop("port", None)
        parsed = SentinelUrl.parse(self.sentinels)
        manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=getattr(self, "sentinel_kwargs", None), **params)
        if asynchronous:
            self._async_sentinel_manager = manager
        else:
            self._sentinel_manager = manager
        credentials = {name: params[name] for name in ("username", "password") if params.get(name)}
        return manager.master_for(self.master_name, Redis, **credentials).connection_pool


class SentinelTransport(Transport):
    Channel = SentinelChannel
    default_port = kombu_redis.SentinelTransport.default_port


#: What ``broker_transport`` names.
TRANSPORT = "seqproc.models.transport:Transport"
#: ... for a ``sentinel://`` broker.
SENTINEL_TRANSPORT = "seqproc.models.transport:SentinelTransport"
#: ... for a ``redis+cluster://`` one (:mod:`seqproc.models.cluster`).
CLUSTER_TRANSPORT = "seqproc.models.cluster:ClusterTransport"
#: Each of them: a producer on any pushes its messages itself (``producer.publish``).
SEQPROC_TRANSPORTS = (TRANSPORT, SENTINEL_TRANSPORT, CLUSTER_TRANSPORT)
