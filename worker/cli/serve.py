"""The long-running processes (``seqproc worker``, ``beat``, ``flower``) and ``seqproc migrate``."""

from __future__ import annotations

import sys

import click

from seqproc.models.errors import first_line
from seqproc.models.settings import Settings, load_settings, mask_url
from seqproc.worker.ops.logs import setup_logging


@click.command()
def migrate() -> None:
    """Create the database if needed and bring its schema up to date (Alembic); the outbox tables too, in
    SEQPROC_OUTBOX_DATABASE_URL's database when it names another one. Then record the partition count (the
    database's, or SEQPROC_PARTITIONS on a first run) and copy it to the outbox database and the broker, where
    producers check theirs."""
    from seqproc.migrations import migrate as run_migrations
    from seqproc.migrations import migrate_outbox

    settings = load_settings()
    setup_logging("WARNING")
    run_migrations(settings.database_url)
    migrate_outbox(settings.outbox_url)
    click.echo(f"migrated {mask_url(settings.database_url)}")
    if settings.outbox_url != settings.database_url:
        click.echo(f"migrated the outbox in {mask_url(settings.outbox_url)}")
    _publish_partition_count(settings)


def _publish_partition_count(settings: Settings) -> None:
    """``seqproc migrate``'s last step: the outbox's id made if it is missing, the database's partition count copied
    to the outbox database and the broker. A broker it cannot reach is only a warning (the workers publish the count
    when they start)."""
    from redis.exceptions import RedisError

    from seqproc.models.clients import broker_client
    from seqproc.models.db import make_engine, outbox_engine
    from seqproc.models.partition_count import mismatch
    from seqproc.models.wire import is_redis_url
    from seqproc.worker.outbox_identity import ensure_outbox_id
    from seqproc.worker.ownership.partitions import publish_partition_count

    engine = make_engine(settings.database_url)
    client = broker_client(settings, timeout_s=5) if is_redis_url(settings.broker_url) else None
    published = client is not None
    try:
        with outbox_engine(settings, engine) as outbox:
            ensure_outbox_id(outbox)
            try:
                count = publish_partition_count(engine, settings.partitions, client=client, outbox=outbox)
            except RedisError as error:
                published = False
                count = publish_partition_count(engine, settings.partitions, outbox=outbox)
                click.echo(
                    f"seqproc migrate: warning: could not publish the partition count in the broker "
                    f"{mask_url(settings.broker_url)} ({first_line(error)}): producers check theirs once a worker "
                    "has started",
                    err=True,
                )
    finally:
        if client is not None:
            client.close()
        engine.dispose()
    click.echo(f"partition count {count}" + (" (published in the broker)" if published else ""))
    if count != settings.partitions:
        click.echo(f"seqproc migrate: warning: {mismatch(settings.partitions, count, where='this database')}", err=True)


@click.command()
@click.option(
    "--partitions",
    "spec",
    default="all",
    show_default=True,
    help="Partitions to own: 0-7, 0,3,5-6, all, or auto (share them with the other auto workers through leases).",
)
@click.option(
    "--hostname",
    default=None,
    help="Celery node name; %h is this host's name, as in celery -n (default seqproc-p<partitions>-<pid>@<host>: "
    "unique per process).",
)
@click.option("--loglevel", default=None, help="Log level (default: SEQPROC_LOG_LEVEL).")
@click.option("--ready-file", default=None, help="Write this file (the pid) once consuming; removed at exit.")
def worker(spec: str, hostname: str | None, loglevel: str | None, ready_file: str | None) -> None:
    """Run a worker that consumes exactly the given partition queues, one batch at a time. It claims nothing
    before its broker, database and result backend answer (exit code 5 otherwise); partitions another worker takes
    over from it, it resumes when that worker exits."""
    from seqproc.worker.ownership.partitions import parse_partitions
    from seqproc.worker.runner import run_worker

    settings = load_settings()
    level = (loglevel or settings.log_level).upper()
    setup_logging(level, settings.log_format)
    partitions = None if spec.strip().lower() == "auto" else parse_partitions(spec, settings.partitions)
    sys.exit(run_worker(settings, partitions, hostname=hostname, loglevel=level, ready_file=ready_file))


@click.command()
@click.option(
    "--hostname", default=None, help="Celery node name; %h is this host's name (default seqproc-beat@<host>)."
)
@click.option("--loglevel", default=None, help="Log level (default: SEQPROC_LOG_LEVEL).")
def beat(hostname: str | None, loglevel: str | None) -> None:
    """Run the scheduled jobs (reconcile counts, purge the ledger, expire reservations, snapshot lag), each a
    singleton: run one beat per host if you like, each job still runs once per slot."""
    from seqproc.worker.runner import run_beat

    settings = load_settings()
    level = (loglevel or settings.log_level).upper()
    setup_logging(level, settings.log_format)
    sys.exit(run_beat(settings, loglevel=level, hostname=hostname))


@click.command()
@click.option("--port", type=click.IntRange(1, 65_535), default=None, help="Port (default: SEQPROC_FLOWER_PORT).")
@click.option("--address", default=None, help="Address to bind (default: SEQPROC_FLOWER_ADDRESS, 127.0.0.1).")
def flower(port: int | None, address: str | None) -> None:
    """Run Flower, the monitoring dashboard: workers, tasks (one per message), their outcomes and the queues."""
    from seqproc.worker.ops.flower import flower_app, flower_argv

    # --address goes through the setting's validation (an empty address would mean every interface).
    settings = load_settings() if address is None else load_settings(flower_address=address)
    argv = flower_argv(settings, port or settings.flower_port, settings.flower_address)
    app = flower_app(settings)
    auth = "basic auth" if settings.flower_basic_auth else "no auth"
    click.echo(
        f"flower: http://{settings.flower_address}:{port or settings.flower_port}/{settings.flower_url_prefix}"
        f" ({auth}), broker {mask_url(settings.broker_url)}",
        err=True,
    )
    sys.exit(app.start(argv=argv) or 0)


@click.command()
@click.option("--loglevel", default=None, help="Log level (default: SEQPROC_LOG_LEVEL).")
@click.option("--once", is_flag=True, help="One pass (send what is committed, forget what is applied), then exit.")
@click.option("--ready-file", default=None, help="Write this file (the pid) once running; removed at exit.")
def relay(loglevel: str | None, once: bool, ready_file: str | None) -> None:
    """Send the events committed to the outbox (SEQPROC_OUTBOX_DATABASE_URL) to their partition queues, many per
    message, in commit order per key; keep each until a worker has applied it, and send again what the broker
    lost. Run as many as you like: they share the partitions."""
    from seqproc.worker.runner import run_relay

    settings = load_settings()
    level = (loglevel or settings.log_level).upper()
    setup_logging(level, settings.log_format)
    sys.exit(run_relay(settings, once=once, ready_file=ready_file))
