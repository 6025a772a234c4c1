"""What ``SEQPROC_DATABASE_SOCKET_TIMEOUT_S`` sets on a real PostgreSQL connection (``models/db_wire.py``): the reply
deadline (a server silent past the statement limit + the setting), and the kernel's keepalives and user timeout on
both ends of the connection. The faults themselves are in ``tests/faults/test_pg_wire_faults.py``."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from seqproc.models.db import driver, make_engine
from seqproc.models.db_wire import NoReplyFromDatabase

pytestmark = pytest.mark.services


@pytest.fixture
def watched(pg_url: str) -> Iterator[Engine]:
    """An engine as a worker makes one: a statement limit of 1 s, a socket timeout of 3 s (a 4 s reply deadline)."""
    engine = make_engine(pg_url, statement_timeout_s=1, socket_timeout_s=3, pool_size=1, pre_ping=False)
    yield engine
    engine.dispose()


def sleep(engine: Engine, seconds: float) -> None:
    """A statement that keeps the server silent ``seconds``, its session's statement limit lifted."""
    with engine.begin() as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SELECT pg_sleep(:s)"), {"s": seconds})


def test_a_server_silent_past_the_deadline_is_given_up_on_and_the_next_transaction_reconnects(watched: Engine) -> None:
    """The session's own statement limit lifted, the server sleeps past the deadline without a byte: the wait ends
    at the deadline with ``NoReplyFromDatabase`` (SQLAlchemy's ``OperationalError``, a transient error for the
    worker), the connection is dropped from the pool, and the next transaction runs on a new one."""
    with watched.connect() as conn:
        first_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    started = time.monotonic()
    with pytest.raises(OperationalError) as caught:
        sleep(watched, 8)
    took_s = time.monotonic() - started
    assert isinstance(caught.value.orig, NoReplyFromDatabase)
    assert caught.value.connection_invalidated
    assert 4.0 <= took_s < 5.0, took_s
    with watched.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != first_pid


def test_a_statement_within_the_deadline_is_not_given_up_on(watched: Engine) -> None:
    """Silent for less than the deadline (3.5 s of a 4 s one, its statement limit lifted): it completes."""
    sleep(watched, 3.5)


def test_both_ends_of_a_connection_carry_the_keepalives_and_the_user_timeout(watched: Engine) -> None:
    with watched.connect() as conn:
        pg = driver(conn)
        sock = socket.socket(fileno=os.dup(pg.pgconn.socket))
        try:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
        finally:
            sock.close()  # the duplicate only
        server = conn.execute(
            text(
                "SELECT current_setting('tcp_keepalives_idle'), current_setting('tcp_keepalives_interval'),"
                " current_setting('tcp_keepalives_count'), current_setting('tcp_user_timeout')"
            )
        ).one()
    assert tuple(server) == ("3", "1", "3", "3000")  # seconds, seconds, probes, milliseconds


def test_keepalives_the_url_sets_are_kept(pg_url: str) -> None:
    engine = make_engine(f"{pg_url}?keepalives_idle=30", statement_timeout_s=1, socket_timeout_s=3, pool_size=1)
    try:
        with engine.connect() as conn:
            sock = socket.socket(fileno=os.dup(driver(conn).pgconn.socket))
            try:
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
            finally:
                sock.close()
    finally:
        engine.dispose()
