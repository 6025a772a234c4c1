"""Retry in place: a transient database error (connection lost, server restarting, serialization failure,
statement timeout) is retried with capped exponential backoff, holding the same events, so that order holds.
Celery's own retry (a new message, at the back of the queue) would break per-key order, so it is never used.

A statement timeout is retried only a few times: one that always times out (a statement too slow for
``apply_time_limit_s`` whatever the load) would otherwise hold its partition forever. After that it is raised as a
permanent failure, and the caller isolates the events at fault."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import psycopg
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from seqproc.models.errors import first_line

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: First pause after a transient failure; it doubles up to the ``retry_backoff_max_s`` setting.
DEFAULT_FIRST_BACKOFF_S = 0.05
#: Statement timeouts tolerated in one retry loop: a busy server may time out a statement once or twice, one that
#: times out every time never passes. Connection errors (a server restart) have no such bound.
DEFAULT_MAX_STATEMENT_TIMEOUTS = 3


class StopRetrying(Exception):
    """The worker is shutting down while retrying: the caller gives its messages back unacknowledged."""


def is_transient(error: BaseException) -> bool:
    """True for errors that may pass if the same transaction is tried again. psycopg's own errors count as
    SQLAlchemy's wrappers of them do: a pipeline (the stores' writes) raises them unwrapped when it ends."""
    if isinstance(error, OperationalError | InterfaceError | psycopg.OperationalError | psycopg.InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def is_statement_timeout(error: BaseException) -> bool:
    """True for a statement cancelled by ``statement_timeout`` (SQLSTATE 57014), wrapped by SQLAlchemy or not."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    return isinstance(cause, pg_errors.QueryCanceled)


def retry_in_place(
    attempt: Callable[[], T],
    *,
    what: str,
    backoff_max_s: float,
    should_stop: Callable[[], bool],
    first_backoff_s: float = DEFAULT_FIRST_BACKOFF_S,
    max_statement_timeouts: int = DEFAULT_MAX_STATEMENT_TIMEOUTS,
    transient: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call ``attempt`` until it returns or fails with an error ``transient`` says will not pass (re-raised). The
    ``max_statement_timeouts``-th statement timeout is re-raised too: for the caller it is a permanent failure.

    Raises :class:`StopRetrying` if ``should_stop()`` turns true between attempts.
    """
    pause_s = first_backoff_s
    failures = 0
    timeouts = 0
    while True:
        try:
            return attempt()
        except Exception as error:
            if not transient(error):
                raise
            if is_statement_timeout(error):
                timeouts += 1
                if timeouts >= max_statement_timeouts:
                    logger.error(
                        "%s: statement timed out %d times (SEQPROC_APPLY_TIME_LIMIT_S); giving up: %s",
                        what,
                        timeouts,
                        first_line(error),
                    )
                    raise
            failures += 1
            if should_stop():
                raise StopRetrying(what) from error
            log = logger.warning if failures == 1 or failures % 10 == 0 else logger.debug
            log(
                "%s: transient error (attempt %d), retrying in %.2f s: %s",
                what,
                failures,
                pause_s,
                first_line(error),
            )
            deadline = time.monotonic() + pause_s
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, pause_s))
            pause_s = min(pause_s * 2, backoff_max_s)
