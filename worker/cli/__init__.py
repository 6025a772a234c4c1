"""``seqproc``: the command line, split by audience.

- :mod:`.serve`: the long-running processes (``worker``, ``relay``, ``beat``, ``flower``) and ``migrate``;
- :mod:`.admin`: what an operator asks (``status``, ``show``, ``partitions``, ``settings``);
- :mod:`.deadletters`: ``deadletter list``, ``replay``, ``retry`` and ``discard``;
- :mod:`.enqueue`: ``enqueue <type>``, one command per event type, generated from the event schemas;
- :mod:`.demo` and :mod:`.bench`: the demo, and the benchmark of a source checkout.

Subcommand modules never import this one; it registers them. Errors become one line on stderr and a named exit
code, never a traceback.
"""

from __future__ import annotations

import sys

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from seqproc.models.errors import (
    ConfigError,
    InvalidEvent,
    OutcomeTimeout,
    PartitionCountMismatch,
    PublishError,
    SeqprocError,
    ServiceUnavailable,
    first_line,
)
from seqproc.worker.cli import admin, bench, deadletters, demo, enqueue, serve
from seqproc.worker.cli.codes import (
    RET_CONFIG,
    RET_FAILED,
    RET_INVALID_EVENT,
    RET_OK,
    RET_TIMEOUT,
    RET_UNAVAILABLE,
)

__all__ = ["RET_CONFIG", "RET_FAILED", "RET_INVALID_EVENT", "RET_OK", "RET_TIMEOUT", "RET_UNAVAILABLE", "cli", "main"]

_EXIT_CODES: list[tuple[type[SeqprocError], int]] = [
    (ConfigError, RET_CONFIG),
    (PartitionCountMismatch, RET_CONFIG),
    (InvalidEvent, RET_INVALID_EVENT),
    (PublishError, RET_UNAVAILABLE),
    (ServiceUnavailable, RET_UNAVAILABLE),
    (OutcomeTimeout, RET_TIMEOUT),
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
        code = next((c for kind, c in _EXIT_CODES if isinstance(error, kind)), RET_FAILED)
        click.echo(f"seqproc: {type(error).__name__}: {error}", err=True)
        sys.exit(code)
    except (DBAPIError, RedisError, OSError) as error:
        # A service that is down or refuses us: one line saying which, not a traceback.
        click.echo(f"seqproc: ServiceUnavailable: {first_line(error, limit=1000)}", err=True)
        sys.exit(RET_UNAVAILABLE)
    sys.exit(code if isinstance(code, int) else RET_OK)
