"""``seqproc``: the command line. Errors become one line on stderr and a named exit code, never a traceback."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError

from models.errors import (
    ConfigError,
    InvalidEvent,
    OutcomeTimeout,
    PartitionCountMismatch,
    PublishError,
    SeqprocError,
)
from models.settings import Settings, load_settings, mask_url
from worker.flower import flower
from worker.logs import setup_logging
from worker.status import status

#: Exit codes (dramatiq-style names): scripts can tell a bad setting from a broker that is down.
RET_OK = 0
RET_FAILED = 1  # the command ran and found a problem (the demo's invariants did not hold)
RET_USAGE = 2  # click's code for a bad command line
RET_CONFIG = 3
RET_INVALID_EVENT = 4
RET_UNAVAILABLE = 5
RET_TIMEOUT = 6

_EXIT_CODES: list[tuple[type[SeqprocError], int]] = [
    (ConfigError, RET_CONFIG),
    (PartitionCountMismatch, RET_CONFIG),
    (InvalidEvent, RET_INVALID_EVENT),
    (PublishError, RET_UNAVAILABLE),
    (OutcomeTimeout, RET_TIMEOUT),
]

logger = logging.getLogger("seqproc")


def _settings() -> Settings:
    return load_settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """seqproc: apply hot writes (likes, stock) in order, one writer per key, exactly once."""


@cli.command()
def migrate() -> None:
    """Create the database if needed and bring its schema up to date (Alembic)."""
    from worker.migrate import migrate as run_migrations

    settings = _settings()
    setup_logging("WARNING")
    run_migrations(settings.database_url)
    click.echo(f"migrated {mask_url(settings.database_url)}")


@cli.command()
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
    help="Celery node name; %h is this host's name, as in celery -n (default seqproc-p<partitions>@<host>).",
)
@click.option("--loglevel", default=None, help="Log level (default: SEQPROC_LOG_LEVEL).")
@click.option("--ready-file", default=None, help="Write this file (the pid) once consuming; removed at exit.")
def worker(spec: str, hostname: str | None, loglevel: str | None, ready_file: str | None) -> None:
    """Run a worker that consumes exactly the given partition queues, one batch at a time."""
    from worker.partitions import parse_partitions
    from worker.runner import run_worker

    settings = _settings()
    level = (loglevel or settings.log_level).upper()
    setup_logging(level, settings.log_format)
    partitions = None if spec.strip().lower() == "auto" else parse_partitions(spec, settings.partitions)
    sys.exit(run_worker(settings, partitions, hostname=hostname, loglevel=level, ready_file=ready_file))


@cli.command()
@click.option(
    "--hostname", default=None, help="Celery node name; %h is this host's name (default seqproc-beat@<host>)."
)
@click.option("--loglevel", default=None, help="Log level (default: SEQPROC_LOG_LEVEL).")
def beat(hostname: str | None, loglevel: str | None) -> None:
    """Run the scheduled jobs (reconcile counts, purge the ledger, expire reservations, snapshot lag), each a
    singleton: run one beat per host if you like, each job still runs once per slot."""
    from worker.runner import run_beat

    settings = _settings()
    level = (loglevel or settings.log_level).upper()
    setup_logging(level, settings.log_format)
    sys.exit(run_beat(settings, loglevel=level, hostname=hostname))


@cli.group()
def show() -> None:
    """Print the applied state of an article or a product."""


def _print_state(state: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(state, sort_keys=True))
        return
    width = max(len(k) for k in state)
    for key, value in state.items():
        click.echo(f"{key:<{width}}  {value}")


def _with_connection(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    from models.db import make_engine

    engine = make_engine(_settings().database_url)
    try:
        with engine.connect() as conn:
            return fn(conn, *args)
    finally:
        engine.dispose()


@show.command("article")
@click.argument("article_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show_article(article_id: int, as_json: bool) -> None:
    """like_count, and the number of like rows (they must be equal)."""
    from worker.state import article_state

    _print_state(_with_connection(article_state, article_id), as_json)


@show.command("product")
@click.argument("product_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show_product(product_id: int, as_json: bool) -> None:
    """available, reserved, sold and total received."""
    from worker.state import product_state

    _print_state(_with_connection(product_state, product_id), as_json)


def _enqueue(event_type: str, fields: dict[str, Any], wait_s: float | None, as_json: bool) -> None:
    import producer
    from producer.api import build_event
    from producer.publish import publisher_for

    event = build_event(event_type, {k: v for k, v in fields.items() if v is not None})
    receipt = publisher_for(producer.api.current_settings()).publish([event])[0]
    result: dict[str, Any] = {
        "type": event_type,
        "idempotency_key": receipt.idempotency_key,
        "event_id": receipt.event_id,
        "partition": receipt.partition,
        "queue": receipt.queue,
    }
    if wait_s is not None:
        result["outcome"] = receipt.wait(timeout_s=wait_s).to_wire()
    if as_json:
        click.echo(json.dumps(result, sort_keys=True))
    else:
        click.echo(" ".join(f"{k}={v}" for k, v in result.items()))


def _enqueue_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--wait", "wait_s", type=float, default=None, help="Wait this many seconds for the outcome.")(fn)
    return click.option("--json", "as_json", is_flag=True, help="One JSON object.")(fn)


@cli.group()
def enqueue() -> None:
    """Send one event from the shell (as application code would)."""


@enqueue.command("like")
@click.argument("article_id", type=int)
@click.argument("user_id", type=int)
@click.option("--key", "idempotency_key", default=None, help="Idempotency key (default: a fresh one).")
@_enqueue_options
def enqueue_like(
    article_id: int, user_id: int, idempotency_key: str | None, wait_s: float | None, as_json: bool
) -> None:
    _enqueue(
        "like",
        {"article_id": article_id, "user_id": user_id, "idempotency_key": idempotency_key},
        wait_s,
        as_json,
    )


@enqueue.command("unlike")
@click.argument("article_id", type=int)
@click.argument("user_id", type=int)
@click.option("--key", "idempotency_key", default=None, help="Idempotency key (default: a fresh one).")
@_enqueue_options
def enqueue_unlike(
    article_id: int, user_id: int, idempotency_key: str | None, wait_s: float | None, as_json: bool
) -> None:
    _enqueue(
        "unlike",
        {"article_id": article_id, "user_id": user_id, "idempotency_key": idempotency_key},
        wait_s,
        as_json,
    )


@enqueue.command("reserve")
@click.argument("product_id", type=int)
@click.argument("quantity", type=int)
@click.argument("reservation_id")
@_enqueue_options
def enqueue_reserve(product_id: int, quantity: int, reservation_id: str, wait_s: float | None, as_json: bool) -> None:
    _enqueue(
        "reserve",
        {"product_id": product_id, "quantity": quantity, "reservation_id": reservation_id},
        wait_s,
        as_json,
    )


@enqueue.command("release")
@click.argument("product_id", type=int)
@click.argument("reservation_id")
@_enqueue_options
def enqueue_release(product_id: int, reservation_id: str, wait_s: float | None, as_json: bool) -> None:
    _enqueue("release", {"product_id": product_id, "reservation_id": reservation_id}, wait_s, as_json)


@enqueue.command("commit")
@click.argument("product_id", type=int)
@click.argument("reservation_id")
@_enqueue_options
def enqueue_commit(product_id: int, reservation_id: str, wait_s: float | None, as_json: bool) -> None:
    _enqueue("commit", {"product_id": product_id, "reservation_id": reservation_id}, wait_s, as_json)


@enqueue.command("restock")
@click.argument("product_id", type=int)
@click.argument("quantity", type=int)
@click.option("--key", "idempotency_key", default=None, help="Idempotency key (default: a fresh one).")
@_enqueue_options
def enqueue_restock(
    product_id: int, quantity: int, idempotency_key: str | None, wait_s: float | None, as_json: bool
) -> None:
    _enqueue(
        "restock",
        {"product_id": product_id, "quantity": quantity, "idempotency_key": idempotency_key},
        wait_s,
        as_json,
    )


@cli.command()
@click.option("--threads", default=16, show_default=True, help="Producer threads.")
@click.option("--events", "events_per_thread", default=400, show_default=True, help="Like/unlike events per thread.")
@click.option("--workers", default=2, show_default=True, help="Worker processes (partitions split between them).")
@click.option("--embedded", is_flag=True, help="Use the embedded mode even if PostgreSQL and Redis answer.")
def demo(threads: int, events_per_thread: int, workers: int, embedded: bool) -> None:
    """Migrate, start workers, send a burst of likes and reservations, and check every invariant."""
    from worker.demo import run_demo

    setup_logging("WARNING")
    ok = run_demo(threads=threads, events_per_thread=events_per_thread, workers=workers, force_embedded=embedded)
    sys.exit(RET_OK if ok else RET_FAILED)


@cli.group()
def deadletter() -> None:
    """What could not be applied: list it, and replay a parked key once the cause is fixed."""


@deadletter.command("list")
@click.option("--key", "entity_key", default=None, help="Only this entity (article:42, product:7).")
@click.option("--all", "include_replayed", is_flag=True, help="Include dead letters already replayed.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: dead_letters and parked_keys.")
def deadletter_list(entity_key: str | None, include_replayed: bool, limit: int, as_json: bool) -> None:
    """Dead letters, oldest first, with their error; and the parked keys."""
    from models.db import make_engine
    from worker.deadletters import list_dead_letters, parked_keys

    engine = make_engine(_settings().database_url)
    try:
        with engine.connect() as conn:
            letters = list_dead_letters(conn, entity_key=entity_key, include_replayed=include_replayed, limit=limit)
            parked = parked_keys(conn)
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps({"dead_letters": letters, "parked_keys": parked}, sort_keys=True))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"dead letters ({len(letters)})")
    for column in ("id", "partition", "entity", "idempotency key"):
        table.add_column(column)
    # The whole error, wrapped: the constraint or the field that failed often comes after the first 80 characters.
    # "fold" breaks a word longer than the column instead of cutting it off.
    table.add_column("error", overflow="fold")
    for column in ("created", "replayed"):
        table.add_column(column)
    for d in letters:
        # Text, not str: an error's "[parameters: ...]" or a key with brackets would be taken for markup and vanish.
        table.add_row(
            str(d["id"]),
            str(d["partition"]),
            Text(d["entity_key"] or "-"),
            Text(d["event_key"] or "-"),
            Text(d["error"]),
            d["created_at"] or "",
            d["replayed_at"] or "",
        )
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    if parked:
        console.print("parked: " + ", ".join(p["entity_key"] for p in parked))


@deadletter.command("replay")
@click.argument("key")
@click.option("--wait", "wait_s", type=float, default=30.0, show_default=True, help="Wait this long for the worker.")
def deadletter_replay(key: str, wait_s: float) -> None:
    """Apply KEY's dead letters (article:42, product:7) in order, exactly once, then unpark it.

    The request goes through KEY's partition queue, so it takes its place in the stream: whatever was queued for KEY
    before it is dead-lettered first, and what comes after it is applied after the replayed events."""
    import producer
    from producer.publish import publisher_for
    from worker.deadletters import replay_event

    event = replay_event(key)
    receipt = publisher_for(producer.api.current_settings()).publish([event])[0]
    outcome = receipt.wait(timeout_s=wait_s)
    click.echo(f"{key}: {outcome.status} ({outcome.reason}) on partition {receipt.partition}")


@cli.group()
def partitions() -> None:
    """The deployment's partition count (fixed: changing it re-routes keys)."""


@partitions.command("set")
@click.argument("count", type=click.IntRange(1, 1024))
def partitions_set(count: int) -> None:
    """Record a new partition count; refused while any partition queue holds events."""
    import redis

    from models.db import make_engine
    from worker.partitions import set_partition_count

    settings = _settings()
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        raise ConfigError("seqproc partitions set reads the queues from a Redis broker (SEQPROC_BROKER_URL)")
    engine = make_engine(settings.database_url)
    try:
        old = set_partition_count(engine, redis.Redis.from_url(settings.broker_url), count)
    finally:
        engine.dispose()
    click.echo(f"partition count {old} -> {count}; start producers and workers with SEQPROC_PARTITIONS={count}")


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@cli.command()
@click.option("--scenario", type=click.Choice(["hot", "spread", "flash"]), default="hot", show_default=True)
@click.option(
    "--producers", "producers_csv", default="32", show_default=True, help="Producer threads; a list runs each."
)
@click.option(
    "--events", "events", type=click.IntRange(1, 1_000_000), default=200, show_default=True, help="Events per producer."
)
@click.option(
    "--strategies",
    "strategies_csv",
    default="all",
    show_default=True,
    help="Comma-separated: atomic, for_update, optimistic, serializable, redis_writebehind, "
    "seqproc_single, seqproc_batched (all: these); seqproc_observed (batched with metrics, JSON logs, task events).",
)
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="seqproc worker processes.")
@click.option("--scale", "scale_csv", default=None, help="Also run seqproc_batched with these worker counts (1,2,4).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per run instead of tables.")
@click.option("--chart/--no-chart", default=True, show_default=True, help="Save a PNG chart in bench/results/.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=None, help="Default: bench/results/.")
@click.option(
    "--soak-s",
    type=float,
    default=None,
    help="Instead: run seqproc_batched on 'spread' this long and check the worker's memory stays flat.",
)
def bench(
    scenario: str,
    producers_csv: str,
    events: int,
    strategies_csv: str,
    workers: int,
    scale_csv: str | None,
    as_json: bool,
    chart: bool,
    results_dir: Path | None,
    soak_s: float | None,
) -> None:
    """Compare seqproc with row locks, atomic updates, optimistic and serializable retries, and Redis write-behind."""
    from rich.console import Console

    from bench import run as bench_run

    setup_logging("WARNING")
    settings = bench_run.bench_settings(_settings())
    strategies = list(bench_run.STRATEGIES) if strategies_csv == "all" else _csv(strategies_csv)
    known = (*bench_run.STRATEGIES, *bench_run.OPTIONAL_STRATEGIES)
    unknown = [s for s in strategies if s not in known]
    if unknown:
        raise ConfigError(f"--strategies: {unknown[0]!r} is not one of {', '.join(known)}")
    try:
        producer_counts = [int(p) for p in _csv(producers_csv)]
    except ValueError:
        raise ConfigError(f"--producers: {producers_csv!r} is not a number or a comma-separated list") from None
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 160)
    bench_run.prepare(settings)
    directory = results_dir or bench_run.RESULTS_DIR
    if soak_s is not None:
        report = bench_run.soak(settings, duration_s=soak_s, producers=int(_csv(producers_csv)[-1]))
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
        click.echo(json.dumps({k: v for k, v in report.items() if k != "samples"}, sort_keys=True))
        if not report["flat_within_20_percent"]:
            raise SeqprocError(f"worker memory grew from {report['rss_mb_after_warmup']} to {report['rss_mb_max']} MB")
        return
    comparisons = []
    for count in producer_counts:
        comparison = bench_run.compare(settings, scenario, count, events, strategies, workers=workers, console=console)
        comparisons.append(comparison)
        if as_json:
            click.echo(json.dumps(comparison.to_json(), sort_keys=True))
        else:
            console.print(bench_run.table(comparison))
            for name, ratio in comparison.ratios().items():
                console.print(f"  {name}: {ratio}")
    saved = bench_run.save(comparisons, directory)
    if chart:
        saved.append(bench_run.chart(comparisons, directory / f"{scenario}.png"))
    if scale_csv:
        scale = []
        for count in [int(w) for w in _csv(scale_csv)]:
            c = bench_run.compare(
                settings, scenario, producer_counts[-1], events, ["seqproc_batched"], workers=count, console=console
            )
            scale.append({"workers": count, **c.results[0].to_json()})
            if as_json:
                click.echo(json.dumps({"scenario": scenario, "scale": scale[-1]}, sort_keys=True))
        path = directory / f"{scenario}-scale.json"
        path.write_text(json.dumps(scale, indent=2) + "\n")
        saved.append(path)
        if not as_json:
            for row in scale:
                console.print(f"  workers={row['workers']}: {row['events_per_s']:,.0f} events/s")
    console.print(f"[dim]saved {', '.join(str(p) for p in saved)}[/dim]")


@cli.command("settings")
def show_settings() -> None:
    """Print the settings in effect (passwords masked)."""
    click.echo(json.dumps(_settings().masked(), indent=2, sort_keys=True))


cli.add_command(flower)
cli.add_command(status)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``seqproc`` console script."""
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
        first = str(getattr(error, "orig", None) or error).strip().splitlines()
        click.echo(f"seqproc: ServiceUnavailable: {first[0] if first else type(error).__name__}", err=True)
        sys.exit(RET_UNAVAILABLE)
    sys.exit(code if isinstance(code, int) else RET_OK)
