"""The one way seqproc opens a Redis client (broker, result backend, locks), so that every client has timeouts.

A client that waits forever on a server that vanished without closing its socket would hang a worker, a job or a
CLI command; each caller says how long it may wait instead. ``redis://`` and ``rediss://`` (TLS) URLs alike:
redis-py reads TLS options from the URL (``?ssl_cert_reqs=required&ssl_ca_certs=/path/ca.pem``) and verifies the
server's certificate by default.
"""

from __future__ import annotations

from typing import Any

import redis

#: How long to wait for a connection to open.
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#: How long to wait for a reply on an open connection.
DEFAULT_TIMEOUT_S = 10.0


def redis_client(
    url: str,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    **options: Any,
) -> redis.Redis:
    """A client of the Redis server at ``url`` (its own connection pool); ``options`` go to redis-py as they are."""
    return redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=timeout_s, **options)
