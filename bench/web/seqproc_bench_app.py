"""What the two applications of ``seqproc bench --server`` share: the atomic update's statements, how a request names
its like, the databases' addresses, and the per-process counters of accepted requests that the benchmark reads.

The servers import the applications from this folder by their own names (``seqproc_bench_*``: gunicorn's
``--pythonpath``, uvicorn's ``--app-dir``), so these modules import nothing from ``bench/``.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from seqproc.models.settings import Settings

#: The folder where each server process keeps its counters (set by the benchmark).
COUNTS_DIR_ENV = "SEQPROC_BENCH_COUNTS_DIR"
#: A process's counters: accepted requests, and the messages and events its seqproc calls sent so far.
COUNTS_FORMAT = "<3q"
COUNTS_SUFFIX = ".count"

#: The atomic update, as ``bench/direct.py`` runs it from its producer threads: the like, then the count.
ATOMIC_INSERT = "INSERT INTO bench_like (article_id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING"
ATOMIC_INCREMENT = "UPDATE bench_like_count SET like_count = like_count + 1 WHERE article_id = %s"


def like_of(query_string: str) -> tuple[int, int]:
    """``article=1&user=7`` -> (1, 7); KeyError or ValueError naming what is wrong otherwise."""
    params = dict(parse_qsl(query_string))
    return int(params["article"]), int(params["user"])


def libpq_urls(settings: Settings) -> tuple[str, str]:
    """seqproc's database (the atomic update's tables live there too) and the outbox's, as psycopg takes them."""
    return _libpq(settings.database_url), _libpq(settings.outbox_url)


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


class Counters:
    """This process's accepted requests, in a small file of its own that the benchmark sums once the server has
    stopped: a shared mapping, so a request pays a store, not a system call, and a killed process keeps its count.
    The file appears (complete, by a rename) once the process is connected: the benchmark waits for all of them."""

    def __init__(self, directory: str) -> None:
        path = Path(directory) / f"{os.getpid()}{COUNTS_SUFFIX}"
        partial = path.with_suffix(".partial")
        partial.write_bytes(bytes(struct.calcsize(COUNTS_FORMAT)))
        with partial.open("r+b") as file:
            self._map = mmap.mmap(file.fileno(), 0)
        partial.replace(path)
        self.accepted = 0

    def accept(self, *, messages: int = 0, events: int = 0) -> None:
        """One more request done (its effect committed or its event sent); the process's send totals so far."""
        self.accepted += 1
        struct.pack_into(COUNTS_FORMAT, self._map, 0, self.accepted, messages, events)


def read_counts(directory: Path) -> tuple[int, int, int]:
    """The sums over every process's counters: accepted requests, messages and events sent."""
    totals = [0, 0, 0]
    for path in directory.glob(f"*{COUNTS_SUFFIX}"):
        for n, value in enumerate(struct.unpack(COUNTS_FORMAT, path.read_bytes())):
            totals[n] += value
    return totals[0], totals[1], totals[2]


def ready_processes(directory: Path) -> int:
    """How many server processes are connected (their counters exist)."""
    return sum(1 for _ in directory.glob(f"*{COUNTS_SUFFIX}"))


#: The broker floor's list (``/broker``): a key of the benchmark's own, emptied before and after the run.
FLOOR_KEY = "seqproc-bench:floor"
#: The floor's message: as long as a one-event seqproc message (its Celery envelope), so Redis and the socket carry
#: what seqproc's push carries.
FLOOR_MESSAGE = b"x" * 1_050


def floor_address(settings: Settings) -> tuple[str, int, int]:
    """Host, port and database of the broker for the floor's plain socket: a ``redis://`` URL without password only
    (the benchmark's own Redis); anything else is refused with what to use."""
    from urllib.parse import urlsplit

    parts = urlsplit(settings.broker_url)
    if parts.scheme != "redis" or parts.password:
        raise ValueError(
            f"SEQPROC_BROKER_URL: the 'broker' floor of seqproc bench --server needs a redis:// URL without password "
            f"(got scheme {parts.scheme!r}); leave it out with --strategies"
        )
    database = int(parts.path.lstrip("/") or 0)
    return parts.hostname or "127.0.0.1", parts.port or 6379, database


def floor_command() -> bytes:
    """``LPUSH seqproc-bench:floor <message>`` in RESP: the one round trip any broker-backed 202 must make."""
    key = FLOOR_KEY.encode()
    return b"*3\r\n$5\r\nLPUSH\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(FLOOR_MESSAGE), FLOOR_MESSAGE)


def select_command(database: int) -> bytes:
    text = str(database).encode()
    return b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%s\r\n" % (len(text), text)


class BrokerFloor:
    """The floor of a broker-backed endpoint: one plain-socket round trip (``LPUSH``) per request, nothing else: no
    client library, no envelope, no numbering. seqproc's endpoint over this one's says what its producer costs."""

    def __init__(self, settings: Settings) -> None:
        import socket

        host, port, database = floor_address(settings)
        self._sock = socket.create_connection((host, port))
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._file = self._sock.makefile("rb")
        self._command = floor_command()
        self._sock.sendall(select_command(database))
        self._expect(b"+OK")

    def push(self) -> None:
        self._sock.sendall(self._command)
        self._expect(b":")

    def _expect(self, head: bytes) -> None:
        reply = self._file.readline()
        if not reply.startswith(head):
            raise RuntimeError(f"the broker answered {reply!r} to the floor's command")


class AsyncBrokerFloor:
    """:class:`BrokerFloor` for an event loop: the requests of one process share one connection, their commands
    pipelined (Redis answers in order: each request waits for its own reply, in a queue of futures)."""

    def __init__(self, reader: Any, writer: Any) -> None:
        import asyncio

        self._reader = reader
        self._writer = writer
        self._command = floor_command()
        self._waiting: asyncio.Queue[asyncio.Future[bytes]] = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._read_replies())

    @classmethod
    async def open(cls, settings: Settings) -> AsyncBrokerFloor:
        import asyncio

        host, port, database = floor_address(settings)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(select_command(database))
        reply = await reader.readline()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"the broker answered {reply!r} to SELECT {database}")
        return cls(reader, writer)

    async def push(self) -> None:
        import asyncio

        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting.put_nowait(reply)
        self._writer.write(self._command)
        if not (await reply).startswith(b":"):
            raise RuntimeError(f"the broker answered {reply.result()!r} to the floor's command")

    async def _read_replies(self) -> None:
        while True:
            line = await self._reader.readline()
            waiter = await self._waiting.get()
            if not line:
                waiter.set_exception(ConnectionError("the broker closed the floor's connection"))
                return
            waiter.set_result(line)

    async def close(self) -> None:
        self._task.cancel()
        self._writer.close()
