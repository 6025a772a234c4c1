"""Retry in place: a transient database error (connection lost, server restarting, serialization failure,
statement timeout) is retried with capped exponential backoff, holding the same events, so that order holds.
Celery's own retry (a new message, at the back of the queue) would break per-key order, so it is never used."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: First pause after a transient failure; it doubles up to the ``retry_backoff_max_s`` setting.
DEFAULT_FIRST_BACKOFF_S = 0.05


class StopRetrying(Exception):
    """The worker is shutting down while retrying: the caller gives its messages back unacknowledged."""


def is_transient(error: BaseException) -> bool:
    """True for errors that may pass if the same transaction is tried again."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def retry_in_place(
    attempt: Callable[[], T],
    *,
    what: str,
    backoff_max_s: float,
    should_stop: Callable[[], bool],
    first_backoff_s: float = DEFAULT_FIRST_BACKOFF_S,
) -> T:
    """Call ``attempt`` until it returns or fails with a non-transient error (re-raised).

    Raises :class:`StopRetrying` if ``should_stop()`` turns true between attempts.
    """
    pause_s = first_backoff_s
    failures = 0
    while True:
        try:
            return attempt()
        except Exception as error:
            if not is_transient(error):
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
                _short(error),
            )
            deadline = time.monotonic() + pause_s
            while time.monotonic() < deadline and not should_stop():
                time.sleep(min(0.1, pause_s))
            pause_s = min(pause_s * 2, backoff_max_s)


def _short(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
