"""Redis commands packed by hand, in RESP, for the hot paths: the producer's push, the worker's fetch and ack.

redis-py packs every command anew through its client, pool, retry and encoder layers; on a path that runs once per
request or once per fetch those layers cost more CPU than Redis spends on the command. What never changes between
calls (the script's SHA-1, a worker's 50 queue, bell and fence keys) is packed once and kept; only the arguments
that change are packed per call. The replies are read by redis-py's own parser, on a connection redis-py opened,
authenticated and health-checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import redis


def pack_texts(args: Iterable[str | bytes | int]) -> bytes:
    """Arguments as consecutive bulk strings (text is UTF-8; an int its decimal digits). One loop, no call per
    argument: a producer's push packs a dozen arguments per request."""
    parts = []
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, bytes):
            data = arg
        else:
            data = b"%d" % arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def pack(*args: str | bytes | int) -> bytes:
    """A whole command."""
    return b"*%d\r\n%s" % (len(args), pack_texts(args))


def command(count: int, *parts: bytes) -> bytes:
    """A command of ``count`` arguments from parts already packed (:func:`pack_texts`)."""
    return b"*%d\r\n" % count + b"".join(parts)


class ReplyLost(redis.ConnectionError):
    """A command was sent but its reply never came (a timeout, a reset): Redis may have run it. The caller must not
    send it again blindly (a fetch run twice would hold messages nobody delivers)."""


def _connected(connection: Any) -> None:
    """Open ``connection`` through its own ``connect()`` if it is closed: a Sentinel connection asks the sentinels
    for the current master there only (``send_packed_command`` alone would reconnect to the address it had, a
    master a failover may have demoted)."""
    if connection._sock is None:
        connection.connect()


class Held:
    """A connection taken from ``client``'s pool and kept, for commands packed by hand: no pool, retry or encoder
    layer per call. A connection error disconnects it (a command half sent or a reply unread never meets the next
    call); the next call connects again."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None

    def run(self, packed: bytes, replies: int = 1, *, script: str | None = None) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and read their replies. ``script``: the script the one command
        runs by SHA-1; loaded and the command sent again if Redis does not know it (a restart, ``SCRIPT FLUSH``). A
        connection lost before anything was sent is tried once more on a new connection."""
        connection = self._connection
        if connection is None or connection.pid != os.getpid():
            # (A forked child never uses its parent's socket: it takes a connection of its own.)
            connection = self._connection = self._pool.get_connection()
        sent = False
        try:
            try:
                _connected(connection)
                connection.send_packed_command([packed])
            except (redis.ConnectionError, OSError):
                connection.disconnect()  # nothing was sent: once more, connecting again
                _connected(connection)
                connection.send_packed_command([packed])
            sent = True
            try:
                return [connection.read_response() for _ in range(replies)]
            except redis.exceptions.NoScriptError:
                if script is None or replies != 1:
                    raise
                connection.send_command("SCRIPT", "LOAD", script)
                connection.read_response()
                connection.send_packed_command([packed])
                return [connection.read_response() for _ in range(replies)]
        except BaseException as error:
            connection.disconnect()  # whatever is left unread on it must not meet the next call
            if sent and isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
                raise ReplyLost(f"sent, but the reply was lost: {error}") from error
            raise

    def close(self) -> None:
        if self._connection is not None and self._connection.pid == os.getpid():
            self._connection.disconnect()
            self._pool.release(self._connection)
        self._connection = None
