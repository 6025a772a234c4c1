"""seqproc's Redis transport on a Redis Cluster (``redis+cluster://h1:p1,h2:p2,...``).

Celery and kombu have no cluster broker (celery#2852); seqproc's transport needs little to run on one, because every
key of a queue lives in the queue's slot (:mod:`seqproc.models.wire`):

- **Fetch**: the same script as on one Redis, one call per queue (a script may touch one slot), pipelined per node,
  each on a connection held per node and packed by hand. A reply that redirects (``MOVED`` after a failover or a
  migration, ``ASK``/``TRYAGAIN`` during one) ran nothing: the slot map is read again and the queue is fetched at
  the next turn. A reply lost (the node died mid-fetch) may have taken messages: :class:`ReplyLost`, as on one Redis
  (the chunk consumer gives back what may be stranded before fetching again).
- **Waiting**: a ``BRPOP`` may name keys of one slot only, so the worker waits on each queue's bell on a connection
  of its own, to the node that holds it, all registered with kombu's event loop; a wake-up fetches the queues whose
  waits returned (a bell, or the 1 s timeout: a lost bell costs at most that).
- **Acks**: per node, pipelined on the connection the fetches go through (a part redirected, or a node gone before
  anything was sent, goes again through the cluster client).
- **Give-backs, restores, leases, probes**: redis-py's cluster client (``conn_or_acquire``), which routes each
  command and script by its key's slot and follows redirections.
- **A silent node** (:class:`~seqproc.models.broker_watch.BrokerWatch`): a fetch or an ack on a node without a reply
  within the socket timeout (``SEQPROC_BROKER_SOCKET_TIMEOUT_S``), or a wait on a bell without one within
  ``brpop_timeout`` plus that, marks the worker's broker watch: every channel fails at once and the consumer
  reconnects, with a new cluster client that reads the slot map again.
- **Celery's own traffic** (task events, the pidbox's broadcasts): kombu's fanout is Redis pub/sub, which a cluster
  carries from any node to every node: kombu's plain client connects to a live seed node for it. kombu's binding
  tables and Celery's job queue are plain keys, served by the cluster client.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from queue import Empty
from time import monotonic, time
from typing import Any

import redis
import redis.cluster
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str

from seqproc.models.clients import ClusterUrl, bounded_retry, cluster_client
from seqproc.models.resp import ReplyLost, pack
from seqproc.models.scripts import FETCH_AND_HOLD, FETCH_AND_HOLD_SHA, FETCH_KEYS_PER_QUEUE
from seqproc.models.settings import mask_url
from seqproc.models.transport import Channel, Fetched, Transport, fetch_keys, readable, tags_by_queue
from seqproc.models.wire import bell_key, unacked_index_key, unacked_key

logger = logging.getLogger(__name__)

#: A bell's wait whose reply is this late (past the server's own timeout) is dropped: a node gone half-open.
WAIT_OVERDUE_S = 10.0
#: Redirections and errors that say "not here, not now": nothing ran (redis-py's parser strips their codes).
_REDIRECTED = (
    redis.exceptions.MovedError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


@dataclass(slots=True, eq=False)
class Waiter:
    """One queue's wait on its bell: a connection to the node that holds the queue, with a ``BRPOP`` outstanding
    (``sent_at``) or idle (None)."""

    queue: str
    node: str
    connection: Any
    sent_at: float | None = None


class ClusterChannel(Channel):
    """seqproc's channel on a Redis Cluster (see the module docstring). ``cluster``: the transport option naming
    the cluster's URL (``SEQPROC_BROKER_URL``); Celery is given one seed node's plain URL."""

    from_transport_options = (*Channel.from_transport_options, "cluster")
    cluster: str | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cluster_client: redis.RedisCluster | None = None
        self._waiters: dict[str, Waiter] = {}
        self._node_connections: dict[str, tuple[int, Any]] = {}
        #: Queues woken (or left over by a fetch's limit) and not fetched yet.
        self._due: dict[str, None] = {}
        super().__init__(*args, **kwargs)

    # -- clients -----------------------------------------------------------------------------------------------------
    def cluster_client(self) -> Any:  # redis.RedisCluster (partly typed)
        if self._cluster_client is None:
            if not self.cluster:
                raise ValueError("the 'cluster' transport option must name the cluster (SEQPROC_BROKER_URL)")
            self._cluster_client = cluster_client(
                self.cluster,
                timeout_s=self.socket_timeout or 10.0,
                connect_timeout_s=self.socket_connect_timeout or 5.0,
            )
        return self._cluster_client

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        if self.broker_watch is not None and not getattr(self, "_closing", False):  # (a close sends nothing)
            self.broker_watch.check()
        try:
            yield self.cluster_client()
        except (redis.ConnectionError, redis.TimeoutError) as error:
            self._noticed(error, "a command")
            raise

    def _connparams(self, asynchronous: bool = False) -> Any:
        # kombu's own client (pub/sub for task events and the pidbox) goes to a seed node that answers now: the
        # one in Celery's URL may be the node a failover took down.
        params = super()._connparams(asynchronous)  # type: ignore[misc]  # kombu has it; the stubs lack it
        if self.cluster:
            for host, port in ClusterUrl.parse(self.cluster).nodes:
                try:
                    redis.Redis(
                        host=host, port=port, socket_connect_timeout=1, socket_timeout=1, retry=bounded_retry(0)
                    ).ping()
                except redis.RedisError:
                    continue
                params["host"], params["port"] = host, port
                break
        return params

    def _node_connection(self, node: Any) -> Any:
        """The connection this channel fetches and acks on, to ``node`` (one per node, per process)."""
        held = self._node_connections.get(node.name)
        if held is None or held[0] != os.getpid():
            pool = self.cluster_client().get_redis_connection(node).connection_pool
            held = self._node_connections[node.name] = (os.getpid(), pool.make_connection())
        return held[1]

    def _refresh(self) -> None:
        """Read the slot map again (after a redirection, a failover)."""
        try:
            self.cluster_client().nodes_manager.initialize()
        except redis.RedisError:
            logger.warning("could not read the cluster's slot map; will try again", exc_info=True)

    # -- kombu's binding tables: no expiry on a cluster -----------------------------------------------------------
    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        # kombu 5.7 keeps the tables of expiring queues (the pidbox's) alive with a script over the table and one
        # set of deadlines for every table: two slots. On a cluster every binding is kept as a permanent one (as
        # kombu did before 5.7): a stopped worker's pidbox binding stays, and a broadcast to it reaches no one.
        kombu: Any = self  # (kombu's attributes, absent from its stubs)
        if self.typeof(exchange).type == "fanout":
            kombu._fanout_queues[queue] = (exchange, routing_key.replace("#", "*"))
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        pipe = self.cluster_client().pipeline(transaction=False)
        pipe.sadd(self.keyprefix_queue % (exchange,), member)
        pipe.sadd(kombu.keyprefix_binding_permanent % (exchange,), member)
        pipe.execute()

    def maybe_refresh_binding_expiry(self) -> None:
        """Nothing to refresh: bindings are permanent on a cluster (see :meth:`_queue_bind`)."""

    def sweep_bindings(self, limit: int = 100) -> int:
        """Nothing to sweep (see :meth:`_queue_bind`)."""
        return 0

    # -- kombu's queue commands, unpipelined: a cluster pipeline's ``delete`` returns None, not the pipeline --------
    # (kombu chains ``pipe = pipe.delete(...)``: the pidbox's reply queue, deleted after each ``inspect``, failed.)
    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        kombu: Any = self  # (kombu's attributes, absent from its stubs)
        kombu.auto_delete_queues.discard(queue)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        # Never the ``client`` kombu passes (its plain one, at a close): a plain client's SREM on another node's slot
        # is MOVED, and the close failed (a pidbox reset, after a failed control command, stopped the consumer).
        client = self.cluster_client()
        client.srem(self.keyprefix_queue % (exchange,), member)
        client.srem(kombu.keyprefix_binding_permanent % (exchange,), member)
        for key in self._priority_keys(queue):
            client.delete(key)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        client = self.cluster_client()
        return any(client.exists(key) for key in self._priority_keys(queue))

    def _size(self, queue: str) -> int:
        client = self.cluster_client()
        return sum(int(client.llen(key)) for key in self._priority_keys(queue))

    def _purge(self, queue: str) -> int:
        client = self.cluster_client()
        purged = 0
        for key in self._priority_keys(queue):
            purged += int(client.llen(key))
            client.delete(key)
        return purged

    def _priority_keys(self, queue: str) -> list[str]:
        kombu: Any = self
        return [kombu._q_for_pri(queue, pri) for pri in self.priority_steps]

    # -- fetching: one script call per queue, pipelined per node ---------------------------------------------------
    def _fetch(self, queues: list[str], limit: int) -> list[tuple[str, bytes]]:
        if self.broker_watch is not None:
            self.broker_watch.check()
        client = self.cluster_client()
        queues = queues[: max(limit, 1)]  # each queue takes at least one: no more queues than the limit
        each = max(limit // len(queues), 1) if queues else 0
        by_node: dict[str, list[str]] = {}
        nodes: dict[str, Any] = {}
        for queue in queues:
            node = client.get_node_from_key(queue)
            nodes[node.name] = node
            by_node.setdefault(node.name, []).append(queue)
        now = f"{time():.6f}"
        items: list[tuple[str, bytes]] = []
        more = False
        lost: ReplyLost | None = None
        for name, served in by_node.items():
            packed = b"".join(
                pack(
                    "EVALSHA",
                    FETCH_AND_HOLD_SHA,
                    FETCH_KEYS_PER_QUEUE,
                    *fetch_keys(q),
                    now,
                    each,
                    1,
                    self.fetch_owner or "",
                )
                for q in served
            )
            try:
                replies = self._run(self._node_connection(nodes[name]), packed, len(served))
            except ReplyLost as error:
                self._noticed(error, f"a fetch on node {name}")  # no reply within the socket timeout: silent
                lost = error  # the other nodes' fetches stand; this one's messages may be stranded
                continue
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._refresh()  # not sent: a node gone; the queues are fetched again at the next turn
                continue
            for queue, reply in zip(served, replies, strict=True):
                if isinstance(reply, redis.ResponseError):
                    if isinstance(reply, _REDIRECTED):
                        self._refresh()
                        self._due[queue] = None
                        continue
                    raise reply
                more = more or len(reply) % 2 == 1
                items += [(bytes_to_str(reply[i]), reply[i + 1]) for i in range(0, len(reply) - 1, 2)]
        self.fetch_left_more = more
        if lost is not None:
            # What the other nodes gave is in unacked too: the chunk consumer's restore of what may be stranded (every
            # queue it owns, before it fetches again) puts it back in line with the rest, in order.
            raise lost
        return items

    @staticmethod
    def _run(connection: Any, packed: bytes, replies: int) -> list[Any]:
        return run_packed(connection, packed, replies, script=FETCH_AND_HOLD)

    # -- acks on the held node connections; give-backs through the cluster client -----------------------------------
    def ack_fetched(self, messages: list[Fetched], settled: Mapping[str, list[str]] | None = None) -> None:
        """Forget ``messages`` (committed) and their events' pending entries: per node, pipelined on the connection
        the fetches go through (one socket timeout at most: a silent node marks the broker watch). A node that
        redirects (a failover, a migration) or cannot be reached before anything was sent has its part sent through
        the cluster client, which follows the redirection."""
        if not messages:
            return
        if self.broker_watch is not None:
            self.broker_watch.check()
        client = self.cluster_client()
        commands: list[tuple[str, tuple[Any, ...]]] = []
        for queue, tags in tags_by_queue(messages).items():
            commands += [
                (queue, ("HDEL", unacked_key(queue), *tags)),
                (queue, ("ZREM", unacked_index_key(queue), *tags)),
            ]
        commands += [(index, ("HDEL", index, *event_ids)) for index, event_ids in (settled or {}).items()]
        by_node: dict[str, tuple[Any, list[tuple[Any, ...]]]] = {}
        for key, args in commands:
            node = client.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append(args)
        again: list[tuple[Any, ...]] = []
        for name, (node, node_commands) in by_node.items():
            packed = b"".join(pack(*args) for args in node_commands)
            try:
                replies = self._run(self._node_connection(node), packed, len(node_commands))
            except ReplyLost as error:
                self._noticed(error, f"an ack on node {name}")
                raise
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                again += node_commands  # not sent: the node is gone (a failover)
                continue
            for args, reply in zip(node_commands, replies, strict=True):
                if isinstance(reply, _REDIRECTED):
                    again.append(args)  # ran nothing there: the slot is elsewhere now
                elif isinstance(reply, redis.ResponseError):
                    raise reply
        if again:
            self._refresh()
            pipe = client.pipeline(transaction=False)
            for args in again:
                pipe.execute_command(*args)
            pipe.execute()

    # -- waiting: one BRPOP per queue, on the node that holds its bell --------------------------------------------
    def _brpop_start(self, timeout: float | None = None) -> None:
        chunk_consumer = self.chunk_consumer
        if chunk_consumer is not None and chunk_consumer.fetches_itself():
            return
        cycle: Any = self.connection.cycle
        queues = list(self._queue_cycle.consume(len(self.active_queues)))  # type: ignore[attr-defined]
        if self.fetch_filter is not None:
            queues = [q for q in queues if self.fetch_filter(q)]
        wanted = set(queues)
        for queue in [q for q in self._waiters if q not in wanted]:
            self._drop_waiter(self._waiters[queue])
        client = self.cluster_client()
        now = monotonic()
        for queue in queues:
            waiter = self._waiters.get(queue)
            if waiter is not None and waiter.sent_at is not None:
                if now - waiter.sent_at > self.brpop_timeout + WAIT_OVERDUE_S:
                    self._drop_waiter(waiter)  # half-open: no reply past the server's own timeout
                else:
                    continue
            node = client.get_node_from_key(queue)
            if node is None:
                continue
            if waiter is None or waiter.node != node.name or waiter.connection._sock is None:
                if waiter is not None:
                    self._drop_waiter(waiter)
                pool = client.get_redis_connection(node).connection_pool
                waiter = self._waiters[queue] = Waiter(queue, node.name, pool.make_connection())
            try:
                if waiter.connection._sock is None:
                    waiter.connection.connect()
                waiter.connection.send_command("BRPOP", bell_key(queue), timeout or self.brpop_timeout or 1)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop_waiter(waiter)
                self._refresh()
                self._due[queue] = None
                continue
            waiter.sent_at = now
            sock = waiter.connection._sock
            cycle._fd_to_chan[sock.fileno()] = (self, "BRPOP")
            cycle._chan_to_sock[(self, waiter, "BRPOP")] = sock
            cycle.poller.register(sock, cycle.eventflags)

    def _drop_waiter(self, waiter: Waiter) -> None:
        self._unregister_waiter(waiter)
        waiter.connection.disconnect()
        self._waiters.pop(waiter.queue, None)

    def _brpop_read(self, **options: Any) -> bool:
        woken = self._read_waits()
        due = list(dict.fromkeys([*self._due, *woken]))
        self._due.clear()
        if not due:
            raise Empty()
        delivered = self._fetch_and_deliver(only=due)
        if delivered:
            return True
        raise Empty()

    def _read_waits(self) -> list[str]:
        """The queues whose wait returned (a bell, a timeout, an error), each read off its connection."""
        woken = []
        for waiter in list(self._waiters.values()):
            if waiter.sent_at is None:
                continue
            try:
                if not waiter.connection.can_read(timeout=0):
                    continue
                waiter.connection.read_response()
                waiter.sent_at = None
                self._unregister_waiter(waiter)
            except redis.ResponseError:
                self._drop_waiter(waiter)  # MOVED (failover, migration): wait on the new holder next turn
                self._refresh()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                self._drop_waiter(waiter)
                self._refresh()
            woken.append(waiter.queue)
        return woken

    def check_responsive(self) -> None:
        """As on one Redis (:meth:`Channel.check_responsive`), for each queue's wait on its bell: one without a reply
        for ``brpop_timeout`` plus the socket timeout (the node answers a ``BRPOP`` within its timeout whatever
        happens) is a node gone silent, and marks the broker watch."""
        watch = self.broker_watch
        if watch is None:
            return
        if watch.silent is None and self.socket_timeout:
            now = monotonic()
            for waiter in list(self._waiters.values()):
                if waiter.sent_at is None:
                    continue
                waited = now - waiter.sent_at
                if waited > self.brpop_timeout + self.socket_timeout and not readable(waiter.connection):
                    watch.mark(
                        TimeoutError(f"no reply in {waited:.1f} s"),
                        timeout_s=self.socket_timeout,
                        where=f"the wait on {waiter.queue}'s bell on node {waiter.node}",
                    )
                    break
        watch.check()

    def _where(self) -> str:
        return f"the cluster at {mask_url(self.cluster or '')}"

    def _unregister_waiter(self, waiter: Waiter) -> None:
        """Take ``waiter``'s socket out of the event loop (its wait returned, or it is dropped)."""
        cycle: Any = self.connection.cycle
        sock = cycle._chan_to_sock.pop((self, waiter, "BRPOP"), None)
        if sock is not None:
            cycle._fd_to_chan.pop(sock.fileno(), None)
            with suppress(KeyError, ValueError, OSError):
                cycle._unregister_from_poll(sock.fileno())

    def close(self) -> None:
        for waiter in list(self._waiters.values()):
            self._drop_waiter(waiter)
        super().close()
        for pid, connection in self._node_connections.values():
            if pid == os.getpid():
                connection.disconnect()
        self._node_connections.clear()
        if self._cluster_client is not None:
            self._cluster_client.close()
            self._cluster_client = None


def run_packed(connection: Any, packed: bytes, replies: int, *, script: str | None = None) -> list[Any]:
    """Send ``packed`` (``replies`` commands) on ``connection`` (one node's) and read every reply, errors as values
    (``MOVED``, ``ASK``: the command ran nothing there). ``script``: the script run by SHA-1, loaded and the lot sent
    again if the node does not know it (a NOSCRIPT ran nothing). A reply lost after the send (a timeout, a reset)
    raises :class:`ReplyLost`: the node may have run the commands."""
    if connection._sock is None:
        connection.connect()
    sent = False
    try:
        connection.send_packed_command([packed])
        sent = True
        out = [_read(connection) for _ in range(replies)]
        if script is not None and any(isinstance(r, redis.exceptions.NoScriptError) for r in out):
            connection.send_command("SCRIPT", "LOAD", script)
            connection.read_response()
            connection.send_packed_command([packed])
            out = [_read(connection) for _ in range(replies)]
        return out
    except BaseException as error:
        connection.disconnect()
        if sent and isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
            raise ReplyLost(f"sent, but the reply was lost: {error}") from error
        raise


def _read(connection: Any) -> Any:
    """One reply; an error reply as a value."""
    try:
        return connection.read_response()
    except redis.ResponseError as error:
        return error


class ClusterPoller(kombu_redis.MultiChannelPoller):
    """kombu's poller; a cluster channel arms its own waits (one per queue), not one ``BRPOP`` on kombu's client."""

    def _register_BRPOP(self, channel: Any) -> None:  # kombu's name
        if isinstance(channel, ClusterChannel):
            channel._brpop_start()
            return
        super()._register_BRPOP(channel)  # type: ignore[misc]  # kombu has it; the stubs lack it


class ClusterTransport(Transport):
    Channel = ClusterChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cycle = ClusterPoller()
