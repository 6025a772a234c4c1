"""What an operator asks: ``seqproc status``, ``show``, ``deadletter``, ``partitions`` and ``settings``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import click
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from seqproc.models.clients import redis_client
from seqproc.models.errors import ConfigError, first_line
from seqproc.models.settings import Settings, load_settings, mask_url
from seqproc.models.wire import is_redis_url
from seqproc.worker.ops.lag import collect


def _require_redis_broker(settings: Settings, command: str) -> None:
    if not is_redis_url(settings.broker_url):
        raise ConfigError(
            f"{command} reads the queues from a Redis broker: SEQPROC_BROKER_URL must be redis:// or rediss://"
        )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _owner(entry: dict[str, Any]) -> str:
    owner = entry["owner"] or "-"
    lease = entry["lease_owner"]
    return owner if lease is None or lease == entry["owner"] else f"{owner} (lease: {lease})"


def _depth(entry: dict[str, Any]) -> str:
    return f"{entry['depth']:,}" + (f" (+{entry['unacked']:,} unacked)" if entry["unacked"] else "")


def render(snapshot: dict[str, Any], *, title: str = "seqproc status") -> Table:
    """The snapshot as a rich table, one row per partition and a totals line."""
    table = Table(title=title, caption=f"at {snapshot['at']}", show_footer=False)
    for column in ("partition", "depth", "oldest", "owner", "epoch"):
        table.add_column(column, justify="left" if column == "owner" else "right")
    for column in ("applied/s", "applied", "dup", "rejected", "parked", "dead", "outbox"):
        table.add_column(column, justify="right")
    for e in snapshot["partitions"]:
        table.add_row(
            str(e["partition"]),
            _depth(e),
            _age(e["oldest_age_s"]),
            _owner(e),
            str(e["epoch"]),
            _rate(e["applied_per_s"]),
            f"{e['applied']:,}",
            f"{e['duplicates']:,}",
            f"{e['rejected']:,}",
            str(e["parked_keys"]),
            str(e["dead_letters"]),
            f"{e['outbox']:,}",
        )
    t = snapshot["totals"]
    dead = str(t["dead_letters"]) + (f" (+{t['dead_letters_other']} other)" if t["dead_letters_other"] else "")
    table.add_section()
    table.add_row(
        "total",
        _depth(t),
        _age(t["oldest_age_s"]),
        f"{t['owners']} worker(s)",
        "",
        _rate(t["applied_per_s"]),
        f"{t['applied']:,}",
        f"{t['duplicates']:,}",
        f"{t['rejected']:,}",
        str(t["parked_keys"]),
        dead,
        f"{t['outbox_depth']:,}" + (f" ({t['outbox_unsent']:,} unsent)" if t["outbox_unsent"] else ""),
        style="bold",
    )
    return table


def _sources(settings: Settings) -> dict[str, str]:
    return {"broker": mask_url(settings.broker_url), "database": mask_url(settings.database_url)}


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with --watch: one per line, per refresh).")
@click.option("--watch", is_flag=True, help="Refresh every --interval until Ctrl-C.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Seconds between the two samples the rates come from (and between refreshes); 0: one sample, no rates.",
)
def status(as_json: bool, watch: bool, interval: float) -> None:
    """Per partition: queue depth, age of the oldest waiting event, owner and epoch, applied/s, applied,
    duplicates, rejections, parked keys and dead letters."""
    from seqproc.models.db import make_engine, outbox_engine
    from seqproc.worker.ownership.partitions import require_partition_count

    settings = load_settings()
    _require_redis_broker(settings, "seqproc status")
    sources = _sources(settings)
    title = f"seqproc status: {sources['broker']}"
    with ExitStack() as cleanup:
        engine = make_engine(settings.database_url, statement_timeout_s=10, pool_size=1)
        cleanup.callback(engine.dispose)
        require_partition_count(engine, settings.partitions)  # another count would show part of the deployment
        outbox = cleanup.enter_context(outbox_engine(settings, engine, statement_timeout_s=10))
        client = redis_client(settings.broker_url)
        cleanup.callback(client.close)

        def snapshot(previous: dict[str, Any] | None = None) -> dict[str, Any]:
            return collect(engine, client, settings.partitions, previous, outbox_engine=outbox)

        if watch:
            _watch(snapshot, interval, as_json, sources, title)
            return
        taken = snapshot()
        if interval > 0:
            time.sleep(interval)
            taken = snapshot(taken)
        if as_json:
            click.echo(json.dumps(taken | sources, sort_keys=True))
        else:
            Console(width=None if sys.stdout.isatty() else 160).print(render(taken, title=title))


def _watch(
    snapshot: Callable[[dict[str, Any] | None], dict[str, Any]],
    interval: float,
    as_json: bool,
    sources: dict[str, str],
    title: str,
) -> None:
    """Refresh until Ctrl-C (then return quietly). A refresh that cannot reach a service says so and the next one
    tries again."""
    from redis.exceptions import RedisError
    from rich.live import Live
    from sqlalchemy.exc import DBAPIError

    pause = max(interval, 0.1)
    previous: dict[str, Any] | None = None
    try:
        if as_json:
            while True:
                previous = snapshot(previous)
                click.echo(json.dumps(previous | sources, sort_keys=True))
                time.sleep(pause)
        with Live(Text("reading..."), auto_refresh=False, console=Console()) as live:
            while True:
                view: RenderableType
                try:
                    previous = snapshot(previous)
                    view = render(previous, title=title)
                except (RedisError, DBAPIError) as error:
                    previous = None
                    view = Text(f"unavailable: {first_line(error)}; retrying every {pause:g} s", style="red")
                live.update(view, refresh=True)
                time.sleep(pause)
    except KeyboardInterrupt:
        return


@click.group()
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
    from seqproc.models.db import make_engine

    engine = make_engine(load_settings().database_url)
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
    from seqproc.worker.ops.inspect import article_state

    _print_state(_with_connection(article_state, article_id), as_json)


@show.command("product")
@click.argument("product_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show_product(product_id: int, as_json: bool) -> None:
    """available, reserved, sold and total received."""
    from seqproc.worker.ops.inspect import product_state

    _print_state(_with_connection(product_state, product_id), as_json)


@click.group()
def deadletter() -> None:
    """What could not be applied: list it, and replay a parked key once the cause is fixed."""


@deadletter.command("list")
@click.option("--key", "entity_key", default=None, help="Only this entity (article:42, product:7).")
@click.option("--all", "include_replayed", is_flag=True, help="Include dead letters already replayed.")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object: dead_letters and parked_keys.")
def deadletter_list(entity_key: str | None, include_replayed: bool, limit: int, as_json: bool) -> None:
    """Dead letters, oldest first, with their error; and the parked keys."""
    from seqproc.models.db import make_engine
    from seqproc.worker.ops.deadletters import list_dead_letters, parked_keys

    engine = make_engine(load_settings().database_url)
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
    from seqproc.producer.api import current_settings
    from seqproc.producer.publish import publisher_for
    from seqproc.worker.ops.deadletters import replay_event

    settings = current_settings()  # first: it loads SEQPROC_DOMAINS, whose entities replay_event must know
    event = replay_event(key)
    receipt = publisher_for(settings).publish([event])[0]
    outcome = receipt.wait(timeout_s=wait_s)
    click.echo(f"{key}: {outcome.status} ({outcome.reason}) on partition {receipt.partition}")


@click.group()
def partitions() -> None:
    """The deployment's partition count (fixed: changing it re-routes keys)."""


@partitions.command("set")
@click.argument("count", type=click.IntRange(1, 1024))
def partitions_set(count: int) -> None:
    """Record a new partition count; refused while any partition queue holds events, or the outbox events not
    sent yet."""

    from seqproc.models.db import make_engine, outbox_engine
    from seqproc.worker.ownership.partitions import set_partition_count

    settings = load_settings()
    _require_redis_broker(settings, "seqproc partitions set")
    engine = make_engine(settings.database_url)
    try:
        with outbox_engine(settings, engine) as outbox:
            old = set_partition_count(engine, redis_client(settings.broker_url), count, outbox=outbox)
    finally:
        engine.dispose()
    click.echo(f"partition count {old} -> {count}; start producers and workers with SEQPROC_PARTITIONS={count}")


@click.command("settings")
def show_settings() -> None:
    """Print the settings in effect (passwords masked)."""
    click.echo(json.dumps(load_settings().masked(), indent=2, sort_keys=True))
