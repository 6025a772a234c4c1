"""Every error seqproc raises derives from :class:`SeqprocError`.

The names say what went wrong; the messages say which field or setting, what was wrong, and what is allowed,
so that a person can act on them without reading a traceback.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from typing import Any


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


class DatabaseMissing(ServiceUnavailable):
    """The PostgreSQL server answers, but the database named in the URL does not exist (``seqproc migrate`` creates
    it)."""


class NotMigrated(ServiceUnavailable):
    """The database is there, but seqproc's tables are not (or not all): ``seqproc migrate`` was not run on it."""


class PublishError(ServiceUnavailable):
    """The broker did not accept an event within the bounded retry (``setting`` is ``SEQPROC_BROKER_URL``).

    The event was NOT sent, unless the message says otherwise: when the broker stopped answering after the message
    was written, it may hold it (``maybe_sent``), and only a resend with the same idempotency key is safe. With
    ``SEQPROC_PUBLISH_DURABILITY=replica``, a push the primary took but no replica acknowledged in time is also
    ``maybe_sent``. ``receipts``: the receipts of the call's events (as it would have returned them), to ``wait()``
    on or to send again with the same keys; ``receipt`` is the first."""

    def __init__(
        self,
        message: str,
        *,
        setting: str = "",
        url: str = "",
        maybe_sent: bool = False,
        receipts: Sequence[Any] = (),
    ) -> None:
        super().__init__(message, setting=setting, url=url)
        self.maybe_sent = maybe_sent
        self.receipts = list(receipts)

    @property
    def receipt(self) -> Any:
        return self.receipts[0] if self.receipts else None

    def for_receipts(self, receipts: Sequence[Any]) -> PublishError:
        """The same error, carrying ``receipts`` (one caller's, when several calls shared the failed send)."""
        error = PublishError(
            str(self), setting=self.setting, url=self.url, maybe_sent=self.maybe_sent, receipts=receipts
        )
        error.__cause__ = self.__cause__
        return error


class OutcomeUnavailable(ServiceUnavailable):
    """The event WAS sent (the broker holds it), but its outcome could not be read: the result backend
    (``SEQPROC_RESULT_BACKEND``) could not be reached. Do not send it again as a new event: a resend with its
    idempotency key is safe (it is reported ``duplicate``). ``receipts`` are the receipts of the events concerned,
    as the call returned them; ``receipt`` is the first."""

    def __init__(self, message: str, *, setting: str, url: str, receipts: Sequence[Any]) -> None:
        super().__init__(message, setting=setting, url=url)
        self.receipts = list(receipts)

    @property
    def receipt(self) -> Any:
        return self.receipts[0]


class OutcomeTimeout(SeqprocError, TimeoutError):
    """No outcome was reported for an event within the wait. The event was sent; what became of it is not known
    here: it may still be queued or being applied (no worker consumes its partition, a backlog), or it never
    reached a worker (a broker without persistence restarted). ``seqproc status`` and ``seqproc deadletter list``
    tell."""


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


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and the errors it was raised from, in turn."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_refused(error: BaseException) -> bool:
    """True when nothing can answer at that address, for certain: the connection was refused (nothing listens on
    that port) or the host name does not resolve. Waiting will not help, unlike a timeout or a dropped
    connection."""
    return any(isinstance(cause, ConnectionRefusedError | socket.gaierror) for cause in causes(error))
