"""Every error seqproc raises derives from :class:`SeqprocError`.

The names say what went wrong; the messages say which field or setting, what was wrong, and what is allowed,
so that a person can act on them without reading a traceback.
"""

from __future__ import annotations


class SeqprocError(Exception):
    """Base of every error seqproc raises."""


class ConfigError(SeqprocError, ValueError):
    """A setting (``SEQPROC_*``) has a value that is not allowed."""


class InvalidEvent(SeqprocError, ValueError):
    """An event failed validation; nothing was sent.

    ``field`` names the offending field (``"article_id"``, ``"quantity"``, ...).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class ServiceUnavailable(SeqprocError):
    """A service seqproc needs could not be reached, or refused it (a password, a database that is not there).

    ``setting`` names the variable that locates the service (``SEQPROC_DATABASE_URL``, ``SEQPROC_BROKER_URL``,
    ``SEQPROC_RESULT_BACKEND``, ``SEQPROC_OUTBOX_DATABASE_URL``; empty when not known) and ``url`` is its value,
    password masked."""

    def __init__(self, message: str, *, setting: str = "", url: str = "") -> None:
        super().__init__(message)
        self.setting = setting
        self.url = url


class PublishError(SeqprocError):
    """The broker did not accept an event within the bounded retry; the event was NOT sent."""


class OutcomeTimeout(SeqprocError, TimeoutError):
    """No outcome was reported for an event within the wait. The event is not lost: it is queued or in flight."""


class PartitionFenced(SeqprocError):
    """This worker's epoch for a partition is no longer current: another worker owns it, so it must not commit."""

    def __init__(self, message: str, *, partitions: list[int] | None = None) -> None:
        super().__init__(message)
        #: The partitions found fenced.
        self.partitions = partitions or []


class PartitionCountMismatch(SeqprocError):
    """The configured partition count differs from the one the database was set up with."""


class LockNotAcquired(SeqprocError):
    """A singleton job did not start: another run holds its lock, or its scheduled slot already ran."""


class LockLost(SeqprocError):
    """A singleton job's lock expired while it ran (its process stalled): it stops before its next write."""


def first_line(error: BaseException, *, limit: int = 200) -> str:
    """The first line of what went wrong, for a log line or a one-line CLI error: the driver's own message where
    SQLAlchemy wraps one (``error.orig``), else the error's, else its type's name."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__


class DeadLetterRefused(SeqprocError):
    """A dead-letter action that cannot be done: the letter is unknown or closed already, its event still cannot be
    sent (invalid, of a type nobody declared), its key is parked (replay it), or the key to replay is not parked."""
