"""``seqproc``: the command line, split by audience.

- :mod:`.serve`: the long-running processes (``worker``, ``relay``, ``beat``, ``flower``) and ``migrate``;
- :mod:`.admin`: what an operator asks (``status``, ``show``, ``partitions``, ``settings``);
- :mod:`.deadletters`: ``deadletter list``, ``replay``, ``retry`` and ``discard``;
- :mod:`.enqueue`: ``enqueue <type>``, one command per event type, generated from the event schemas;
- :mod:`.demo` and :mod:`.bench`: the demo, and the benchmark of a source checkout.

Subcommand modules never import this one; it registers them. Errors become one line on stderr and a named exit
code, never a traceback: a driver's error raised while reaching a service is said as the service it concerns (its
variable, its masked URL, what to do: :mod:`seqproc.models.services`).
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from seqproc.models.errors import (
    ConfigError,
    DatabaseMissing,
    InvalidEvent,
    NotMigrated,
    OutcomeTimeout,
    OutcomeUnavailable,
    PartitionCountMismatch,
    PublishError,
    SeqprocError,
    ServiceUnavailable,
    first_line,
)
from seqproc.models.services import explain
from seqproc.models.settings import load_settings
from seqproc.worker.cli import admin, bench, deadletters, demo, enqueue, serve
from seqproc.worker.cli.codes import (
    RET_CONFIG,
    RET_FAILED,
    RET_INVALID_EVENT,
    RET_OK,
    RET_REJECTED,
    RET_TIMEOUT,
    RET_UNAVAILABLE,
)
from seqproc.worker.cli.text import plain_help

__all__ = [
    "RET_CONFIG",
    "RET_FAILED",
    "RET_INVALID_EVENT",
    "RET_OK",
    "RET_REJECTED",
    "RET_TIMEOUT",
    "RET_UNAVAILABLE",
    "cli",
    "exit_code",
    "main",
]

#: The first kind an error is an instance of gives its code.
_EXIT_CODES: list[tuple[type[SeqprocError], int]] = [
    (ConfigError, RET_CONFIG),
    (PartitionCountMismatch, RET_CONFIG),
    (DatabaseMissing, RET_CONFIG),
    (NotMigrated, RET_CONFIG),
    (InvalidEvent, RET_INVALID_EVENT),
    # Sent: the outcome is what is unknown. A script must not take it for "not sent" and send a second event.
    (OutcomeUnavailable, RET_TIMEOUT),
    (OutcomeTimeout, RET_TIMEOUT),
    (ServiceUnavailable, RET_UNAVAILABLE),
]


def exit_code(error: SeqprocError) -> int:
    """The exit code of ``error`` (README, "Command line")."""
    if isinstance(error, PublishError) and error.maybe_sent:
        return RET_TIMEOUT
    return next((code for kind, code in _EXIT_CODES if isinstance(error, kind)), RET_FAILED)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="seqproc", prog_name="seqproc", message="%(prog)s %(version)s")
def cli() -> None:
    """seqproc: apply hot writes (likes, stock) in order, one writer per key, exactly once."""


for command in (
    serve.migrate,
    serve.worker,
    serve.beat,
    serve.flower,
    serve.relay,
    admin.status,
    admin.show,
    deadletters.deadletter,
    admin.partitions,
    admin.show_settings,
    enqueue.enqueue,
    demo.demo,
    bench.bench,
):
    plain_help(command)
    cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``seqproc`` console script and of ``python -m seqproc``."""
    try:
        code = cli.main(args=argv, prog_name="seqproc", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("seqproc: aborted", err=True)
        sys.exit(130)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except SeqprocError as error:
        _fail(error)
    except (DBAPIError, RedisError, OSError) as error:
        # A service that is down or refuses us: one line saying which, not a traceback.
        explained = _explain(error)
        if explained is not None:
            _fail(explained)
        click.echo(f"seqproc: {type(error).__name__}: {first_line(error, limit=1000)}", err=True)
        sys.exit(RET_FAILED)
    sys.exit(code if isinstance(code, int) else RET_OK)


def _explain(error: BaseException) -> SeqprocError | None:
    try:
        settings = load_settings()
    except ConfigError:  # the command read them already; it would not have got this far with a bad one
        return None
    return explain(error, settings)


def _fail(error: SeqprocError) -> NoReturn:
    click.echo(f"seqproc: {type(error).__name__}: {error}", err=True)
    sys.exit(exit_code(error))
