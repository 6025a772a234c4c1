"""Which service an error concerns, in one line a person can act on: the variable that names the service, its URL
(password masked), and what to do.

Each service seqproc reaches is named by one setting: its database (``SEQPROC_DATABASE_URL``), the outbox's
(``SEQPROC_OUTBOX_DATABASE_URL``), the broker (``SEQPROC_BROKER_URL``) and the result backend
(``SEQPROC_RESULT_BACKEND``). The producer's errors say which themselves (:class:`PublishError`,
:class:`OutcomeUnavailable`). A database error is raised by SQLAlchemy far from the code that chose the URL, so every
engine made by :func:`seqproc.models.db.make_engine` marks the errors it raises with its URL (:func:`mark_engine`),
and :func:`explain` finds the setting that holds that URL. The errors keep their types: the worker's retry in place
still tells a transient error from a permanent one.
"""

from __future__ import annotations

import re
import socket

import redis
from sqlalchemy import Engine, event
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from seqproc.models.errors import DatabaseMissing, NotMigrated, SeqprocError, ServiceUnavailable, first_line
from seqproc.models.settings import ENV_PREFIX, Settings, mask_url

#: The attribute a marked engine sets on the errors it raises: the URL of its database.
URL_ATTRIBUTE = "seqproc_database_url"

_MISSING_TABLE = re.compile(r'relation "(?:\w+\.)?(\w+)" does not exist|no such table: (?:\w+\.)?(\w+)')
_MISSING_DATABASE = re.compile(r'database "([^"]+)" does not exist')


def variable(field: str) -> str:
    """The environment variable of a setting: ``broker_url`` -> ``SEQPROC_BROKER_URL``."""
    return f"{ENV_PREFIX}{field.upper()}"


def mark_engine(engine: Engine, url: str) -> None:
    """Mark every error ``engine`` raises (connecting included) with ``url``, for :func:`explain`."""

    def mark(context: ExceptionContext) -> None:
        error = context.sqlalchemy_exception
        if error is not None:
            setattr(error, URL_ATTRIBUTE, url)

    event.listen(engine, "handle_error", mark)


def database_setting(url: str | None, settings: Settings) -> str:
    """The variable holding ``url``: ``SEQPROC_DATABASE_URL`` (also when the outbox shares it),
    ``SEQPROC_OUTBOX_DATABASE_URL``, or empty for a URL that is neither."""
    if url == settings.database_url:
        return variable("database_url")
    if url == settings.outbox_url:
        return variable("outbox_database_url")
    return ""


def explain(error: BaseException, settings: Settings) -> SeqprocError | None:
    """The seqproc error that says what ``error`` (a driver's, raised while reaching a service) means for a person:
    which variable, its masked URL, and what to do. None when ``error`` is not about reaching a service."""
    if isinstance(error, DBAPIError):
        return explain_database(error, settings)
    if isinstance(error, redis.RedisError | ConnectionError | TimeoutError | socket.gaierror):
        # The command line reads one Redis directly, the broker; outcomes come through OutcomeUnavailable.
        field = "broker_url"
        url = mask_url(settings.broker_url)
        return ServiceUnavailable(
            f"cannot reach the broker at {variable(field)}={url}: {first_line(error)}", setting=variable(field), url=url
        )
    return None


def explain_database(error: DBAPIError, settings: Settings) -> SeqprocError | None:
    """A database error as :class:`NotMigrated` (a seqproc table is missing), :class:`DatabaseMissing` or
    :class:`ServiceUnavailable` (the server could not be reached, refused the connection, or failed operationally: a
    statement timeout, a shutdown); None for any other (a statement the server refused: a bug to report as is)."""
    url: str | None = getattr(error, URL_ATTRIBUTE, None)
    setting = database_setting(url, settings)
    shown = mask_url(url) if url else "?"
    where = f"{setting}={shown}" if setting else shown
    reason = first_line(error, limit=300).removeprefix("connection failed: ")
    table = _MISSING_TABLE.search(reason)
    if table and (table[1] or table[2]) in seqproc_tables():
        return NotMigrated(
            f"the database at {where} has no seqproc tables ({reason}): run `seqproc migrate`",
            setting=setting,
            url=shown,
        )
    if not is_unreachable(error):
        if isinstance(error, OperationalError):  # the server's own trouble (a statement timeout, a shutdown)
            return ServiceUnavailable(f"PostgreSQL at {where} failed: {reason}", setting=setting, url=shown)
        return None
    database = _MISSING_DATABASE.search(reason)
    if database:
        return DatabaseMissing(
            f'database "{database[1]}" does not exist ({where}): `seqproc migrate` creates it',
            setting=setting,
            url=shown,
        )
    return ServiceUnavailable(f"cannot reach PostgreSQL at {where}: {reason}", setting=setting, url=shown)


def is_unreachable(error: DBAPIError) -> bool:
    """True when the database could not be reached or refused the connection (no server error code: libpq's own,
    a connection lost), as opposed to a statement the server refused."""
    if error.connection_invalidated:
        return True
    return isinstance(error, OperationalError | InterfaceError) and getattr(error.orig, "sqlstate", None) is None


def seqproc_tables() -> set[str]:
    """The names of seqproc's tables (the outbox's included)."""
    from seqproc.models.tables import Base
    from seqproc.models.tables.outbox import OutboxBase

    return {table.name for base in (Base, OutboxBase) for table in base.metadata.tables.values()}
