"""Redis commands packed by hand, in RESP, for the hot paths: the producer's push, the worker's fetch and ack.

redis-py packs every command anew through its client, pool, retry and encoder layers; on a path that runs once per
request or once per fetch those layers cost more CPU than Redis spends on the command. What never changes between
calls (the script's SHA-1, a worker's 50 queue, bell and fence keys, a partition's queue and bell) is packed once
and kept; only the arguments that change are packed per call. They go out on a :class:`Held` connection: redis-py's
own, which it opened, authenticated and health-checks; its replies are read by redis-py's parser (:meth:`Held.run`)
or, for a command whose reply is one integer (the producer's push), straight off the socket (:meth:`Held.call`).
"""

from __future__ import annotations

import os
import time
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
    send it again blindly (a fetch run twice would hold messages nobody delivers; a push sent again is a copy, which
    the ledger makes a duplicate)."""


def _connected(connection: Any) -> Any:
    """The socket of ``connection``, opened through its own ``connect()`` if it is closed: a Sentinel connection
    asks the sentinels for the current master there only (``send_packed_command`` alone would reconnect to the
    address it had, a master a failover may have demoted)."""
    if connection._sock is None:
        connection.connect()
    return connection._sock


class Held:
    """A connection of ``client``'s pool kept by this process for commands packed by hand: no pool, retry or
    encoder layer per call. A forked child never uses its parent's socket: it makes a connection of its own, seen
    by its pid (a fork hook would miss uWSGI's workers, forked without Python's hooks). The connection opens at the
    first call, within that call's waits (:meth:`call`'s ``timeout_s``), not the pool's.

    A command half sent or a reply unread never meets the next call: anything that stops an exchange half-way (an
    error, a timeout, an interrupt) disconnects it, and the next call connects again. Not thread-safe: its owner
    makes its calls one at a time."""

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        self._connection: Any = None
        self._pid = 0
        #: The waits the connections get from the pool (``call`` may bound them for one call).
        self._connect_timeout_s: float | None = self._pool.connection_kwargs.get("socket_connect_timeout")
        self._timeout_s: float | None = self._pool.connection_kwargs.get("socket_timeout")

    def connection(self) -> Any:
        """This process's connection (made, not connected, at its first use in the process)."""
        connection = self._connection
        pid = os.getpid()
        if connection is None or self._pid != pid:
            connection = self._connection = self._pool.make_connection()
            self._pid = pid
        return connection

    def open(self, timeout_s: float | None = None) -> None:
        """Connect now (and authenticate, and whatever the pool's connections do as they open), within
        ``timeout_s`` if given."""
        connection = self.connection()
        self._bound(connection, timeout_s)
        try:
            _connected(connection)
        finally:
            self._bound(connection, None)

    def run(self, packed: bytes, replies: int = 1, *, script: str | None = None) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and read their replies with redis-py's parser. ``script``: the
        script the one command runs by SHA-1; loaded and the command sent again if Redis does not know it (a
        restart, ``SCRIPT FLUSH``). A connection lost before anything was sent is tried once more on a new
        connection; one lost after it raises :class:`ReplyLost`."""
        connection = self.connection()
        sent = False
        try:
            _send(connection, packed)
            sent = True
            try:
                return [connection.read_response() for _ in range(replies)]
            except redis.exceptions.NoScriptError:
                if script is None or replies != 1:
                    raise
                _load(connection, script)
                connection.send_packed_command([packed])
                return [connection.read_response() for _ in range(replies)]
        except BaseException as error:
            connection.disconnect()  # whatever is left unread on it must not meet the next call
            if sent and isinstance(error, redis.ConnectionError | redis.TimeoutError | OSError):
                raise ReplyLost(f"sent, but the reply was lost: {error}") from error
            raise

    def call(self, packed: bytes, *, script: str | None = None, timeout_s: float | None = None) -> int:
        """Send ``packed``, one command whose reply is an integer, and return it, read straight off the socket
        (redis-py's reply parser costs more CPU than the round trip on a producer's path). ``script`` as in
        :meth:`run`; ``timeout_s``: this call's waits (connecting, the reply) last that long at most.

        Redis must speak RESP2 on this connection (no out-of-band push frames: the producer's client asks for it).
        A reply begun but cut, or none within the wait, raises :class:`ReplyLost` (Redis may run it yet: a busy or
        paused server reads it later); a connection closed or reset before any reply came raises
        ``redis.ConnectionError`` (it never took it). An error reply is raised as redis-py raises it (its own
        parser maps it: ``BusyLoadingError``, a connection error, while Redis loads its data); ``READONLY`` (a
        failover demoted this server to a replica: the command was refused) as a ``redis.ConnectionError``, the
        connection closed so that the next call connects to the master the sentinels name now."""
        connection = self.connection()
        if timeout_s is not None:
            self._bound(connection, timeout_s)
        try:
            reply = _call_on(connection, packed)
            if reply[:1] == b"-" and reply.startswith(b"-NOSCRIPT") and script is not None:
                _load(connection, script)
                reply = _call_on(connection, packed)
            if reply[:1] == b":":
                return int(reply[1:-2])
            raise _refused(connection, reply)
        finally:
            if timeout_s is not None:
                self._bound(connection, None)

    def close(self) -> None:
        if self._connection is not None and self._pid == os.getpid():
            self._connection.disconnect()
        self._connection = None

    def _bound(self, connection: Any, seconds: float | None) -> None:
        """Make ``connection``'s waits (connecting, and the replies on its socket) last ``seconds`` at most, or
        (None) what the pool gave them."""
        connect_s, read_s = self._connect_timeout_s, self._timeout_s
        if seconds is not None:
            connect_s = max(min(connect_s or seconds, seconds), 0.001)
            read_s = max(min(read_s or seconds, seconds), 0.001)
        connection.socket_connect_timeout = connect_s
        connection.socket_timeout = read_s
        if connection._sock is not None:
            connection._sock.settimeout(read_s)


def _send(connection: Any, packed: bytes) -> None:
    """Send ``packed``; a connection lost before anything went out is opened again, once."""
    try:
        _connected(connection)
        connection.send_packed_command([packed])
    except (redis.ConnectionError, OSError):
        connection.disconnect()  # nothing was sent: once more, connecting again
        _connected(connection)
        connection.send_packed_command([packed])


def _load(connection: Any, script: str) -> None:
    connection.send_command("SCRIPT", "LOAD", script)
    connection.read_response()


def _call_on(connection: Any, packed: bytes) -> bytes:
    """Send ``packed`` and read its one-line reply (``:<n>`` or ``-<error>``), whole; see :meth:`Held.call`."""
    sock: Any = _connected(connection)
    if connection.health_check_interval:
        connection.check_health()  # a PING after an idle spell (the server may have closed the connection)
        sock = _connected(connection)
    try:
        sock.sendall(packed)
    except BaseException:
        connection.disconnect()
        raise
    reply: bytes = b""
    try:
        reply = sock.recv(4096)
        while not reply.endswith(b"\r\n"):
            more = sock.recv(4096)
            if not more:
                raise redis.ConnectionError("the server closed the connection before replying")
            reply += more
    except Exception as error:
        connection.disconnect()
        if reply or isinstance(error, TimeoutError):
            raise ReplyLost(f"no reply: {type(error).__name__}: {error}") from error
        raise
    except BaseException:
        connection.disconnect()
        raise
    if reply.count(b"\r\n") != 1:
        connection.disconnect()
        raise redis.ConnectionError(f"unexpected reply: {reply[:80]!r}")
    if connection.health_check_interval:
        connection.next_health_check = time.monotonic() + connection.health_check_interval
    return reply


def _refused(connection: Any, reply: bytes) -> Exception:
    """The error of a reply that is not an integer (see :meth:`Held.call`)."""
    if reply[:1] != b"-":
        connection.disconnect()
        return redis.ConnectionError(f"unexpected reply: {reply[:80]!r}")
    refused: Exception = connection._parser.parse_error(reply[1:-2].decode("utf-8", "replace"))
    if isinstance(refused, redis.exceptions.ReadOnlyError):
        connection.disconnect()
        return redis.ConnectionError("the server is a replica now (a failover demoted it); the command was refused")
    return refused
