"""Engines for PostgreSQL (psycopg 3) and for the embedded SQLite file."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from seqproc.models.db_wire import server_options, tcp_params, watch_replies
from seqproc.models.services import mark_engine
from seqproc.models.settings import Settings, mask_url

logger = logging.getLogger(__name__)


def make_engine(
    url: str,
    *,
    statement_timeout_s: float | None = None,
    idle_in_transaction_timeout_s: float | None = None,
    pool_size: int = 5,
    application_name: str = "seqproc",
    pre_ping: bool = True,
    socket_timeout_s: float | None = None,
) -> Engine:
    """An engine for ``url``. On PostgreSQL, ``statement_timeout_s`` bounds every statement (the apply time limit),
    and ``idle_in_transaction_timeout_s`` ends a session that sits in an open transaction (a worker paused or hung
    mid-batch), releasing its locks, so that another worker can take its partitions over. ``application_name``
    names the sessions in ``pg_stat_activity`` (a worker's name lets a new owner find a stale one's sessions).
    ``pre_ping``: test each connection with a round trip as it leaves the pool; a caller that retries a transaction
    whose connection turns out dead (the worker) does without that round trip. The errors the engine raises carry
    ``url``, so that a command can say which setting names the database it could not reach
    (:mod:`seqproc.models.services`). ``socket_timeout_s`` (``SEQPROC_DATABASE_SOCKET_TIMEOUT_S``, PostgreSQL): TCP
    keepalives, a TCP user timeout and the connect timeout from it, and, with ``statement_timeout_s``, a deadline on
    every reply: ``statement_timeout_s + socket_timeout_s`` without a byte from the server closes the connection
    (:mod:`seqproc.models.db_wire`)."""
    engine = _make_engine(
        url, statement_timeout_s, idle_in_transaction_timeout_s, pool_size, application_name, pre_ping, socket_timeout_s
    )
    mark_engine(engine, url)
    return engine


def _make_engine(
    url: str,
    statement_timeout_s: float | None,
    idle_in_transaction_timeout_s: float | None,
    pool_size: int,
    application_name: str,
    pre_ping: bool,
    socket_timeout_s: float | None,
) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": application_name}
    # Every statement seqproc runs over and over takes its keys as an array. psycopg prepares a statement on its
    # fifth run, and PostgreSQL then keeps one generic plan for it if that looks no dearer: planned while a table is
    # empty (a new deployment, a truncated one), that plan scans the table, and keeps scanning it as it grows, until
    # an autoanalyze invalidates it. Measured: a flash sale's reservation load went from under 1 ms to 0.7 s per
    # batch. Custom plans see the table as it is now, for a few tens of microseconds of planning per statement.
    options = ["-c plan_cache_mode=force_custom_plan"]
    if statement_timeout_s is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_s * 1000)}")
    if idle_in_transaction_timeout_s is not None:
        options.append(f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_s * 1000)}")
    if socket_timeout_s is not None:
        options.extend(server_options(socket_timeout_s))
        connect_args.update(tcp_params(socket_timeout_s, given=dict(make_url(url).query)))
    connect_args["options"] = " ".join(options)
    engine = create_engine(
        url,
        pool_pre_ping=pre_ping,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
    )
    if socket_timeout_s is not None and statement_timeout_s is not None:
        # A statement runs statement_timeout_s at most on the server: silence past that, and past the slack the
        # network gets, is a connection gone (half-open), not a slow statement.
        watch_replies(engine, statement_timeout_s + socket_timeout_s)
    return engine


def outbox_engine(
    settings: Settings, ledger: Engine, *, statement_timeout_s: float | None = None
) -> AbstractContextManager[Engine]:
    """The engine of the outbox's database (``settings.outbox_url``) for the length of a ``with``: ``ledger`` (an
    engine of seqproc's own database) when the outbox lives there, else a one-connection engine made for it
    (``statement_timeout_s`` as :func:`make_engine`'s) and disposed on exit. ``ledger`` is never disposed."""
    return _engine_of(
        settings.outbox_url, same=ledger, same_url=settings.database_url, statement_timeout_s=statement_timeout_s
    )


def ledger_engine(settings: Settings, outbox: Engine) -> AbstractContextManager[Engine]:
    """:func:`outbox_engine` the other way round, for a process built around the outbox (the relay): the engine of
    seqproc's own database (the ledger's), ``outbox`` itself when the outbox lives there, else a one-connection
    engine disposed on exit, with the relay's limits: its statements' (``SEQPROC_APPLY_TIME_LIMIT_S``) and a
    connection's that stops answering (``SEQPROC_DATABASE_SOCKET_TIMEOUT_S``)."""
    return _engine_of(
        settings.database_url,
        same=outbox,
        same_url=settings.outbox_url,
        statement_timeout_s=settings.apply_time_limit_s,
        socket_timeout_s=settings.database_socket_timeout_s,
    )


@contextmanager
def _engine_of(
    url: str,
    *,
    same: Engine,
    same_url: str,
    statement_timeout_s: float | None = None,
    socket_timeout_s: float | None = None,
) -> Iterator[Engine]:
    # The two databases are usually one: one pool then, not two to the same server.
    if url == same_url:
        yield same
        return
    engine = make_engine(url, statement_timeout_s=statement_timeout_s, pool_size=1, socket_timeout_s=socket_timeout_s)
    try:
        yield engine
    finally:
        engine.dispose()


def ensure_database(url: str) -> bool:
    """Create the PostgreSQL database named in ``url`` if it does not exist. Returns True if it created it."""
    parsed = make_url(url)
    if not parsed.drivername.startswith("postgresql") or not parsed.database:
        return False
    name = parsed.database
    for maintenance in ("postgres", "template1"):
        admin = create_engine(parsed.set(database=maintenance), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                exists = conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
                if exists:
                    return False
                conn.execute(text(f'CREATE DATABASE "{name}"'))
                logger.info("created database %s", mask_url(str(parsed.set(database=name))))
                return True
        except OperationalError:
            continue
        finally:
            admin.dispose()
    return False


def can_connect(url: str, *, timeout_s: float = 2.0) -> bool:
    """True if the database answers within ``timeout_s``."""
    if url.startswith("sqlite"):
        return True
    engine = create_engine(url, connect_args={"connect_timeout": max(1, int(timeout_s))}, poolclass=None)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except OperationalError:
        # The database named may not exist yet: the server being up is what matters here.
        try:
            ensure_database(url)
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except OperationalError:
            return False
    finally:
        engine.dispose()


def upsert(conn: Connection, table: Table) -> Any:
    """An INSERT that supports ``on_conflict_do_nothing``/``on_conflict_do_update`` on this connection's dialect."""
    if conn.dialect.name == "sqlite":
        return sqlite.insert(table)
    return postgresql.insert(table)


def array(values: Iterable[Any]) -> str:
    """A PostgreSQL array literal (``{1,2}``, ``{"a","b\\"c",NULL}``) for a parameter the statement casts to an array
    type. psycopg's list dumper walks every element in Python (about 1-2 us each, measured: 770 us for 500 bigints
    against 300 us for the same statement given this literal); this is a join. Columns of only ints, or of only
    strings without a quote or a backslash (keys, ids: the usual case), take one C-level join; the rest goes element
    by element."""
    items = values if isinstance(values, list | tuple) else list(values)
    if not items:
        return "{}"
    kinds = set(map(type, items))  # C-level; ``type(True) is bool``, so booleans never pass for ints
    if kinds == {int}:
        return "{" + ",".join(map(str, items)) + "}"
    if kinds == {str}:
        plain = "".join(items)
        if '"' not in plain and "\\" not in plain:
            return '{"' + '","'.join(items) + '"}'
    parts = []
    for value in items:
        if value is None:
            parts.append("NULL")
        elif isinstance(value, str):
            parts.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
        elif isinstance(value, int) and not isinstance(value, bool):
            parts.append(str(value))
        else:
            raise TypeError(f"array(): {type(value).__name__} elements are not supported")
    return "{" + ",".join(parts) + "}"


def columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[str]:
    """Rows -> one array literal per column, as ``unnest`` takes them."""
    return [array(row[i] for row in rows) for i in range(width)]


def psycopg_driver(conn: Connection) -> bool:
    """True when ``conn`` runs on a synchronous psycopg connection that :func:`driver` may hand statements to
    (PostgreSQL; not an asyncio engine's, which a preview's ``run_sync`` lends to the domains' loads)."""
    return conn.dialect.name == "postgresql" and not conn.dialect.is_async


def driver(conn: Connection) -> Any:
    """The psycopg connection under SQLAlchemy's, in the same transaction."""
    return conn.connection.driver_connection


def pipeline(conn: Connection) -> AbstractContextManager[Any]:
    """On PostgreSQL, a psycopg pipeline on ``conn``'s connection: the statements issued inside go out together and
    are answered in one round trip (at the first result read, or at the end). Inside a pipeline already: nothing
    more (a nested block would sync, a round trip of its own), so that callers can join their statements to an
    enclosing one. Elsewhere (SQLite): nothing."""
    if conn.dialect.name != "postgresql":
        return nullcontext()
    pg = driver(conn)
    if pg.pgconn.pipeline_status:
        return nullcontext()
    return cast(AbstractContextManager[Any], pg.pipeline())
