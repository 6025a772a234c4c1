"""What an operator asks: ``seqproc status``, ``show``, ``partitions`` and ``settings`` (``deadletter``: its own
module)."""

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

from seqproc.models.clients import broker_client
from seqproc.models.errors import ConfigError, first_line
from seqproc.models.settings import Settings, load_settings, mask_url
from seqproc.models.wire import is_redis_url
from seqproc.worker.cli.show import ShowCommands
from seqproc.worker.cli.text import print_state
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
    owner = entry["owner"]
    if owner is None:
        # No live owner: what the alert "a partition has no owner" looks at, with how long and why (``--json``
        # also names the last owner).
        if entry["owner_state"] == "unclaimed":
            return "-"
        since = entry["ownerless_s"]
        return f"none{'' if since is None else ' for ' + _age(since)} ({entry['owner_state']})"
    lease = entry["lease_owner"]
    return owner if lease is None or lease == owner else f"{owner} (lease: {lease})"


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
    if t.get("lost"):
        dead += f", {t['lost']:,} event(s) LOST"  # direct publishes a broker failover dropped (loss detection)
    table.add_section()
    table.add_row(
        "total",
        _depth(t),
        _age(t["oldest_age_s"]),
        f"{t['workers']} worker(s)" + (f", {t['unowned']} unowned" if t["unowned"] else ""),
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
    """Per partition: queue depth, age of the oldest waiting event, owner (live ones only: a partition whose owner
    exited or stopped heartbeating shows none, and for how long) and epoch, applied/s, applied, duplicates,
    rejections, parked keys and dead letters; the live workers in the totals."""
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
        client = broker_client(settings)
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


@click.group(cls=ShowCommands)
def show() -> None:
    """Print the applied state of a key: an article, a product, or any domain's entity (account 7, wallet 7,
    wallet:7)."""


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

    print_state(_with_connection(article_state, article_id), as_json)


@show.command("product")
@click.argument("product_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def show_product(product_id: int, as_json: bool) -> None:
    """available, reserved, sold and total received."""
    from seqproc.worker.ops.inspect import product_state

    print_state(_with_connection(product_state, product_id), as_json)


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
            old = set_partition_count(engine, broker_client(settings), count, outbox=outbox)
    finally:
        engine.dispose()
    click.echo(f"partition count {old} -> {count}; start producers and workers with SEQPROC_PARTITIONS={count}")


@click.command("settings")
def show_settings() -> None:
    """Print the settings in effect (passwords masked)."""
    click.echo(json.dumps(load_settings().masked(), indent=2, sort_keys=True))
