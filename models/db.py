"""Engines for PostgreSQL (psycopg 3) and for the embedded SQLite file."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, make_url, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError

from seqproc.models.settings import mask_url

logger = logging.getLogger(__name__)


def make_engine(
    url: str,
    *,
    statement_timeout_s: float | None = None,
    idle_in_transaction_timeout_s: float | None = None,
    pool_size: int = 5,
    application_name: str = "seqproc",
) -> Engine:
    """An engine for ``url``. On PostgreSQL, ``statement_timeout_s`` bounds every statement (the apply time limit),
    and ``idle_in_transaction_timeout_s`` ends a session that sits in an open transaction (a worker paused or hung
    mid-batch), releasing its locks, so that another worker can take its partitions over. ``application_name``
    names the sessions in ``pg_stat_activity`` (a worker's name lets a new owner find a stale one's sessions)."""
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
    options = []
    if statement_timeout_s is not None:
        options.append(f"-c statement_timeout={int(statement_timeout_s * 1000)}")
    if idle_in_transaction_timeout_s is not None:
        options.append(f"-c idle_in_transaction_session_timeout={int(idle_in_transaction_timeout_s * 1000)}")
    if options:
        connect_args["options"] = " ".join(options)
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=pool_size,
        connect_args=connect_args,
    )


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
