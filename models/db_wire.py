"""Noticing a database connection that stopped answering (``SEQPROC_DATABASE_SOCKET_TIMEOUT_S``).

libpq has no socket timeout, and PostgreSQL's own limits (``statement_timeout``,
``idle_in_transaction_session_timeout``) act only on what reaches the server: a worker whose connection went
half-open (a black-holed peer, a stalled proxy or load balancer, a host gone) would wait for its reply forever,
holding its batch and its consumer's loop. Two layers bound that wait, both from the one setting (``socket_timeout_s``):

- **A reply deadline**, on the connections of the processes whose statements have a time limit (workers, the relay,
  beat): a wait for the server during which no byte arrives for the statement time limit plus ``socket_timeout_s``
  gives up. The connection is closed and :class:`NoReplyFromDatabase` raised, an ``OperationalError``: SQLAlchemy
  drops the connection from its pool, the worker retries its transaction in place on a new one, the relay its pass.
  Whether the last statement ran is unknown (a ``COMMIT`` may have reached the server): the ledger turns a re-applied
  event into a duplicate, and nothing is acknowledged before a commit is known. Measured through a userspace TCP
  proxy that black-holes the connection (``tests/faults/test_pg_wire_faults.py``): the kernel on the proxy's side
  acknowledges every byte and every keepalive probe, so only this deadline notices.
- **TCP**, for a peer whose kernel stopped answering too (a dead host, a cut link), including connections idle in
  the pool: keepalives (first probe after ``socket_timeout_s`` of silence, then every third of it, three probes) and
  ``tcp_user_timeout`` (libpq >= 12: unacknowledged data for ``socket_timeout_s`` drops the connection); and a new
  connection that does not complete its handshake gives up after ``connect_timeout`` (``socket_timeout_s``, at least
  libpq's 2 s). A parameter the database URL sets itself (``?keepalives_idle=30``) is left as given. The server's
  end of the session gets the same keepalives (``tcp_keepalives_*``, ``tcp_user_timeout``, set for the session):
  a session whose client gave up on a cut link, left waiting for the rest of a pipeline with its row locks held (no
  server timeout applies there), is ended by the server's kernel instead of after its default two hours.

The deadline wraps the generators psycopg hands to ``Connection.wait`` (one per round trip): every wait function of
psycopg wakes it at least every tenth of a second (``Ready.NONE``), so it is checked whether bytes come or not.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator
from typing import Any

import psycopg
from psycopg.waiting import Ready
from sqlalchemy import Engine, event

from seqproc.models.errors import SeqprocError

logger = logging.getLogger(__name__)

#: Keepalive probes sent (``keepalives_count``) before the kernel counts the peer gone.
KEEPALIVE_PROBES = 3
#: libpq reads ``connect_timeout`` in whole seconds and takes less than 2 as 2.
MIN_CONNECT_TIMEOUT_S = 2


class NoReplyFromDatabase(psycopg.OperationalError, SeqprocError):
    """No byte came from the database server within the reply deadline: the connection was closed. Whether its last
    statement ran is not known. SQLAlchemy raises it wrapped in its ``OperationalError`` (a transient error)."""


class WatchedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server gives up after ``reply_timeout_s`` without a byte
    (None: no deadline). A wait given a timeout of its own (``notifies``) keeps it."""

    reply_timeout_s: float | None = None

    def wait(self, gen: Generator[Any, Any, Any], *args: Any, **kwargs: Any) -> Any:
        if self.reply_timeout_s is None or kwargs.get("timeout") is not None:
            return super().wait(gen, *args, **kwargs)
        return super().wait(self._watched(gen, self.reply_timeout_s), *args, **kwargs)

    def _watched(self, gen: Generator[Any, Any, Any], limit_s: float) -> Generator[Any, Any, Any]:
        """``gen``, giving up once ``limit_s`` passed since the socket was last readable."""
        heard = time.monotonic()
        try:
            wait = next(gen)
            while True:
                ready = yield wait
                now = time.monotonic()
                if ready & Ready.R:
                    heard = now
                elif now - heard >= limit_s:
                    gen.close()
                    self._give_up(now - heard)
                wait = gen.send(ready)
        except StopIteration as done:
            return done.value

    def _give_up(self, silent_s: float) -> None:
        where = f"{self.info.host}:{self.info.port}"
        self.pgconn.finish()  # closed: SQLAlchemy sees a disconnect and drops it from the pool
        message = (
            f"no reply from the database at {where} for {silent_s:.1f} s (the statement time limit + "
            "SEQPROC_DATABASE_SOCKET_TIMEOUT_S): connection closed; whether its last statement ran is unknown"
        )
        logger.warning("%s", message)
        raise NoReplyFromDatabase(message)


def tcp_params(socket_timeout_s: float, *, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """libpq connection parameters that make the kernel drop a connection whose peer went silent, and bound a new
    connection's handshake, by ``socket_timeout_s``; those ``given`` already (the URL's own) are left out."""
    idle_s, interval_s = _keepalive_s(socket_timeout_s)
    params = {
        "keepalives": 1,
        "keepalives_idle": idle_s,
        "keepalives_interval": interval_s,
        "keepalives_count": KEEPALIVE_PROBES,
        "tcp_user_timeout": int(socket_timeout_s * 1000),
        "connect_timeout": max(MIN_CONNECT_TIMEOUT_S, math.ceil(socket_timeout_s)),
    }
    return {name: value for name, value in params.items() if name not in (given or {})}


def server_options(socket_timeout_s: float) -> list[str]:
    """The same keepalives and user timeout for the server's end of each session (``-c`` options at connect)."""
    idle_s, interval_s = _keepalive_s(socket_timeout_s)
    return [
        f"-c tcp_keepalives_idle={idle_s}",
        f"-c tcp_keepalives_interval={interval_s}",
        f"-c tcp_keepalives_count={KEEPALIVE_PROBES}",
        f"-c tcp_user_timeout={int(socket_timeout_s * 1000)}",
    ]


def _keepalive_s(socket_timeout_s: float) -> tuple[int, int]:
    """Whole seconds (the kernel's unit): silence before the first probe, and between probes."""
    return max(1, round(socket_timeout_s)), max(1, round(socket_timeout_s / KEEPALIVE_PROBES))


def watch_replies(engine: Engine, reply_timeout_s: float) -> None:
    """Make every connection ``engine`` opens a :class:`WatchedConnection` with this deadline."""

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> WatchedConnection:
        connection = WatchedConnection.connect(*cargs, **cparams)
        connection.reply_timeout_s = reply_timeout_s
        return connection
