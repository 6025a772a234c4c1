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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from seqproc.models.wire import DEFAULT_SENTINEL_MASTER, SENTINEL_SCHEME

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
