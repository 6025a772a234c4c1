"""The one way seqproc opens a Redis client (broker, result backend, locks), so that every client has timeouts.

A client that waits forever on a server that vanished without closing its socket would hang a worker, a job or a
CLI command; each caller says how long it may wait instead, and how often a command is tried again is bounded here
(redis-py's default, ten retries, made one command last minutes under a partition). ``redis://`` and ``rediss://``
(TLS) URLs alike: redis-py reads TLS options from the URL (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``) and
verifies the server's certificate by default.

**Sentinel.** kombu's form, ``sentinel://h1:26379;sentinel://h2:26379;sentinel://h3:26379/0`` (the database after the
last one; a password as ``sentinel://:PASSWORD@h1:26379``, the master's), names the sentinels of a replicated Redis;
``SEQPROC_SENTINEL_MASTER`` names the master they watch. Every connection asks the sentinels for the current master
as it opens (a master they hold down is not given), and a connection that finds a demoted master (``READONLY``) is
closed and opens again on the new one (redis-py's ``SentinelManagedConnection``).

**Redis Cluster.** ``redis+cluster://h1:7000,h2:7001,h3:7002`` (``rediss+cluster://`` for TLS, a password as
``redis+cluster://:PASSWORD@h1:7000,...``; database 0 only, as a cluster has) names seed nodes; the client
(redis-py's ``RedisCluster``) learns the slot map from them, sends each command to the primary of its key's slot, and
follows ``MOVED`` and ``ASK`` redirections (a failover, a slot migrated), reloading the map.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.cluster
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from seqproc.models.wire import DEFAULT_SENTINEL_MASTER, SENTINEL_SCHEME, is_cluster_url

if TYPE_CHECKING:
    from seqproc.models.settings import Settings

#: How long to wait for a connection to open.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: How long to wait for a reply on an open connection.
DEFAULT_TIMEOUT_S = 10.0
#: How many times a command that met a connection error or a timeout is tried again (a caller may give its own
#: ``retry``). With the pauses below, about 5.7 s in all: longer than a Sentinel failover (~2.2 s measured with
#: ``down-after-milliseconds 1000``), so a command sent during one lands on the new master; at most
#: ``(1 + DEFAULT_RETRIES) x timeout_s`` on a server that stopped answering.
DEFAULT_RETRIES = 5
#: Pauses between those tries: 0.25 s, doubled each time, at most 2 s.
RETRY_BACKOFF_BASE_S = 0.25
RETRY_BACKOFF_CAP_S = 2.0
#: A sentinel's default port, for a ``sentinel://host`` without one.
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A ``sentinel://...;sentinel://.../db`` URL, read."""

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        sentinels: list[tuple[str, int]] = []
        db, username, password = 0, None, None
        for part in url.split(";"):
            part = part.strip()
            if not part:
                continue
            if not part.startswith(SENTINEL_SCHEME):
                raise ValueError(f"every part of a Sentinel URL starts with {SENTINEL_SCHEME} (got {part[:40]!r})")
            split = urlsplit(part)
            if not split.hostname:
                raise ValueError(f"a Sentinel URL part names no host: {part[:40]!r}")
            sentinels.append((split.hostname, split.port or SENTINEL_PORT))
            if split.path.strip("/"):
                db = int(split.path.strip("/"))
            username = unquote(split.username) if split.username else username
            password = unquote(split.password) if split.password is not None else password
        if not sentinels:
            raise ValueError("a Sentinel URL names at least one sentinel")
        return cls(tuple(sentinels), db, username, password)


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    """A ``redis+cluster://[user:password@]h1:p1,h2:p2[/0][?options]`` URL, read."""

    nodes: tuple[tuple[str, int], ...]
    tls: bool
    username: str | None
    password: str | None
    #: The query string, as redis-py reads it from a plain URL (``ssl_ca_certs=...``).
    query: str

    @classmethod
    def parse(cls, url: str) -> ClusterUrl:
        scheme, _, rest = url.partition("://")
        if scheme not in ("redis+cluster", "rediss+cluster"):
            raise ValueError(f"a cluster URL starts with redis+cluster:// or rediss+cluster:// (got {url[:40]!r})")
        rest, _, query = rest.partition("?")
        rest, _, path = rest.partition("/")
        if path.strip("/") not in ("", "0"):
            raise ValueError("a Redis Cluster has database 0 only: end the URL with /0 or nothing")
        userinfo, _, hosts = rest.rpartition("@")
        username, _, password = userinfo.partition(":")
        nodes = []
        for part in hosts.split(","):
            split = urlsplit(f"redis://{part.strip()}")
            if not split.hostname:
                raise ValueError(f"a cluster URL names a node without a host: {part[:40]!r}")
            nodes.append((split.hostname, split.port or 6379))
        if not nodes:
            raise ValueError("a cluster URL names at least one node")
        return cls(
            tuple(nodes),
            scheme == "rediss+cluster",
            unquote(username) if username else None,
            unquote(password) if password else None,
            query,
        )

    def node_url(self, host: str, port: int) -> str:
        """One node's plain URL (its credentials, TLS and options): what a plain client or kombu connects to."""
        auth = ""
        if self.username or self.password:
            auth = f"{quote(self.username or '', safe='')}:{quote(self.password or '', safe='')}@"
        query = f"?{self.query}" if self.query else ""
        return f"{'rediss' if self.tls else 'redis'}://{auth}{host}:{port}/0{query}"


#: What redis-py's cluster client raises when a slot is not served here and now: a resharding half done (``TRYAGAIN``
#: for a script whose keys are split between the two nodes, ``ASK``), a failover (``MOVED``, ``CLUSTERDOWN``, a slot
#: not covered), after following a few redirections within about half a second ("TTL exhausted"). The command ran
#: nowhere: a caller tries again until its own deadline, as for a broker it cannot reach.
CLUSTER_NOT_NOW: tuple[type[BaseException], ...] = (
    redis.exceptions.ClusterError,  # "TTL exhausted", CLUSTERDOWN, MASTERDOWN
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # MOVED too
    redis.exceptions.SlotNotCoveredError,
)


def cluster_client(url: str, *, timeout_s: float, connect_timeout_s: float, **options: Any) -> redis.RedisCluster:
    """redis-py's cluster client of the cluster at ``url`` (see the module docstring). Its retry (connection errors,
    timeouts, a cluster down while it fails over) is bounded as every client's, and lasts longer than a failover
    with ``cluster-node-timeout`` 1000 ms; a deployment with the default 15 s gives it ``retry`` of its own."""
    parsed = ClusterUrl.parse(url)
    host, port = parsed.nodes[0]
    options.setdefault("retry", bounded_retry())
    options.pop("health_check_interval", None)  # per node connection: not a cluster client's option
    client: redis.RedisCluster = redis.RedisCluster.from_url(
        parsed.node_url(host, port),
        startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in parsed.nodes],  # type: ignore[no-untyped-call]
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        **options,
    )
    return client


def async_cluster_client(
    url: str, *, timeout_s: float, connect_timeout_s: float, **options: Any
) -> redis.asyncio.RedisCluster:
    """:func:`cluster_client` for an event loop."""
    parsed = ClusterUrl.parse(url)
    host, port = parsed.nodes[0]
    options.setdefault(
        "retry",
        redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S), DEFAULT_RETRIES
        ),
    )
    options.pop("health_check_interval", None)
    client: redis.asyncio.RedisCluster = redis.asyncio.RedisCluster.from_url(
        parsed.node_url(host, port),
        startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in parsed.nodes],
        socket_timeout=timeout_s,
        socket_connect_timeout=connect_timeout_s,
        **options,
    )
    return client


#: A ``WAIT``'s answer must come before the socket's own timeout (the reply has to travel, on a loaded host too):
#: it waits a tenth less than the time left, and at least this much less.
WAIT_SLACK_S = 0.05


def wait_timeout_ms(seconds: float) -> int:
    """``WAIT 1 <ms>``'s timeout for a caller with ``seconds`` left (at least 1 ms: 0 would mean forever)."""
    return max(1, int(min(seconds * 0.9, seconds - WAIT_SLACK_S) * 1000))


def is_sentinel_url(url: str) -> bool:
    return url.startswith(SENTINEL_SCHEME)


def bounded_retry(retries: int = DEFAULT_RETRIES, *, on_timeout: bool = True) -> Retry:
    """redis-py's retry of a command on connection errors and timeouts, bounded (see ``DEFAULT_RETRIES``).
    ``on_timeout=False``: a refusal or a reset (a failover, a restart) is retried, a wait for a reply that ran out
    is not (a silent broker: another try would wait as long for nothing)."""
    backoff = ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S)
    if on_timeout:
        return Retry(backoff, retries)
    return Retry(backoff, retries, supported_errors=(redis.ConnectionError,))


def redis_client(
    url: str,
    *,
    sentinel_master: str = DEFAULT_SENTINEL_MASTER,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **options: Any,
) -> redis.Redis:
    """A client of the Redis server at ``url`` (its own connection pool); for a Sentinel URL, of the current master
    ``sentinel_master``. ``options`` go to redis-py as they are."""
    if is_cluster_url(url):
        # A cluster client answers the commands seqproc sends as a client of one server does (routing each by its
        # key's slot); the callers that must tell them apart ask ``isinstance(client, redis.RedisCluster)``.
        return cast(
            redis.Redis, cluster_client(url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, **options)
        )
    options.setdefault("retry", bounded_retry())
    timeouts: dict[str, Any] = {"socket_connect_timeout": connect_timeout_s, "socket_timeout": timeout_s}
    if not is_sentinel_url(url):
        return redis.Redis.from_url(url, **timeouts, **options)
    parsed = SentinelUrl.parse(url)
    sentinel = redis.sentinel.Sentinel(list(parsed.sentinels), sentinel_kwargs=_sentinel_kwargs(timeouts))
    options.update(NO_ADDRESS)
    client: redis.Redis = sentinel.master_for(sentinel_master, **_master_kwargs(parsed), **timeouts, **options)
    return client


def broker_client(settings: Settings, **options: Any) -> redis.Redis:
    """:func:`redis_client` of the broker's Redis (``SEQPROC_BROKER_URL``, and ``SEQPROC_SENTINEL_MASTER`` for a
    Sentinel URL): leases, fences, the relay's pushes, beat's locks, the queue probes."""
    return redis_client(settings.broker_url, sentinel_master=settings.sentinel_master, **options)


def async_redis_client(
    url: str,
    *,
    sentinel_master: str = DEFAULT_SENTINEL_MASTER,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **options: Any,
) -> redis.asyncio.Redis:
    """:func:`redis_client` for an event loop (``redis.asyncio``); the client belongs to the loop that uses it."""
    if is_cluster_url(url):
        return cast(
            redis.asyncio.Redis,
            async_cluster_client(url, timeout_s=timeout_s, connect_timeout_s=connect_timeout_s, **options),
        )
    options.setdefault(
        "retry",
        redis.asyncio.retry.Retry(
            ExponentialBackoff(cap=RETRY_BACKOFF_CAP_S, base=RETRY_BACKOFF_BASE_S), DEFAULT_RETRIES
        ),
    )
    timeouts: dict[str, Any] = {"socket_connect_timeout": connect_timeout_s, "socket_timeout": timeout_s}
    if not is_sentinel_url(url):
        return redis.asyncio.Redis.from_url(url, **timeouts, **options)
    parsed = SentinelUrl.parse(url)
    sentinel = redis.asyncio.sentinel.Sentinel(list(parsed.sentinels), sentinel_kwargs=_sentinel_kwargs(timeouts))
    options.update(NO_ADDRESS)
    client: redis.asyncio.Redis = sentinel.master_for(sentinel_master, **_master_kwargs(parsed), **timeouts, **options)
    return client


def sentinel_transport_options(master: str, *, timeout_s: float) -> dict[str, Any]:
    """kombu's Sentinel transport options (seqproc's transport and Celery's alike; Flower reads the same): the
    master's name, and the sentinels' own socket waits (a sentinel that does not answer is skipped for the next)."""
    return {
        "master_name": master,
        "sentinel_kwargs": {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
    }


#: Where a Sentinel connection points before the sentinels named the master: nowhere (port 0 refuses at once).
#: redis-py's connection asks the sentinels in ``connect()`` only; a path that opens the socket otherwise (a health
#: check's PING on a connection never opened) would go to redis-py's default, localhost:6379, a server that may be
#: any other deployment's.
NO_ADDRESS = {"host": "127.0.0.1", "port": 0}


def _sentinel_kwargs(timeouts: dict[str, Any]) -> dict[str, Any]:
    # A sentinel that does not answer is skipped for the next one at once (redis-py's Sentinel does not retry
    # one): its waits are bounded by the client's, and never longer than 2 s (asking a sentinel is one small reply).
    return {name: min(value, 2.0) for name, value in timeouts.items()}


def _master_kwargs(parsed: SentinelUrl) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"db": parsed.db}
    if parsed.username:
        kwargs["username"] = parsed.username
    if parsed.password is not None:
        kwargs["password"] = parsed.password
    return kwargs
