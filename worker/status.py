"""``seqproc status``: lag and metrics per partition, read straight from Redis and PostgreSQL.

One row per partition (``SEQPROC_PARTITIONS`` of them), and a totals line. Where each figure comes from:

- ``depth``: messages waiting in the partition queue ``seqproc.pNN`` (``LLEN``). A message may carry many events
  (the producer packs one message per partition and call), so this counts messages, not events.
- ``unacked``: messages of that queue delivered to a worker but not acknowledged yet: entries of the ``unacked``
  hash whose routing key is the queue (counted inside Redis, so the messages themselves are not transferred). Held
  by a live worker they are being applied; held by a dead one they come back after a takeover or the visibility
  timeout.
- ``oldest_age_s``: the age of the oldest waiting event: now minus the ``stamp`` (the producer's wall clock, in
  nanoseconds) of the first event of the message at the consuming end of the list (index -1, where ``RPOP``
  takes). None when the queue is empty (or that message is not one of ours). Clock skew between the producer's host
  and this one shifts it by that skew.
- ``owner``, ``epoch``: the ``partition`` table: the worker that last claimed the partition (``node/pid/run``) and the
  fencing epoch it claimed it with. ``lease_owner``: the holder of the Redis lease ``seqproc:lease:seqproc.pNN``
  (only ``--partitions auto`` workers take leases; None otherwise, or when the lease expired).
- ``applied``, ``duplicates``, ``rejected``: running totals in the ``partition`` table, raised by every apply
  transaction in the same commit as its effects.
- ``applied_per_s``: the rise of ``applied`` between two snapshots divided by the time between them; None without
  a previous snapshot. The command takes one, waits ``--interval``, takes another; ``--watch`` compares each
  refresh with the one before.
- ``parked_keys``: rows of ``parked_key`` (entities whose events wait in the dead-letter store until
  ``seqproc deadletter replay``). ``dead_letters``: rows of ``dead_letter`` not replayed yet; those with no
  partition (a message on a queue that is not a partition queue) are counted in the totals as
  ``dead_letters_other``.

Round trips: one Redis pipeline (``LLEN``, ``LINDEX -1`` and the lease ``GET`` per partition, one script counting
``unacked``) and three SQL queries (the partition rows, parked keys and dead letters grouped by partition).
"""

from __future__ import annotations

import base64
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import click
import redis
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine, func, select

from models.base import table_of
from models.errors import ConfigError
from models.ledger import DeadLetter, ParkedKey
from models.partition import Partition
from models.settings import Settings, load_settings, mask_url
from producer.routing import queue_name
from worker.leases import lease_key

#: kombu's hash of delivered, unacknowledged messages: delivery tag -> JSON ``[message, exchange, routing_key]``.
UNACKED_KEY = "unacked"

#: Count the entries of the unacked hash per routing key (the last element of each value), inside Redis.
#: KEYS[1]: the hash. Returns routing_key1, count1, routing_key2, count2, ...
COUNT_UNACKED = """
local counts = {}
for _, value in ipairs(redis.call('HVALS', KEYS[1])) do
    local key = string.match(value, '"([^"]*)"%s*%]%s*$')
    if key then counts[key] = (counts[key] or 0) + 1 end
end
local out = {}
for key, n in pairs(counts) do
    out[#out + 1] = key
    out[#out + 1] = n
end
return out
"""

#: The per-partition counters summed into ``totals``.
_SUMMED = ("depth", "unacked", "applied", "duplicates", "rejected", "parked_keys", "dead_letters")


def collect(
    engine: Engine, redis_client: Any, partitions: int, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A snapshot of every partition (see the module docstring for each figure). With ``previous`` (an earlier
    snapshot, as returned here or read back from its JSON), ``applied_per_s`` is the rate between the two."""
    parts = table_of(Partition)
    parked = table_of(ParkedKey)
    dead = table_of(DeadLetter)
    with engine.connect() as conn:
        rows = {
            int(row.partition): row
            for row in conn.execute(
                select(
                    parts.c.partition,
                    parts.c.epoch,
                    parts.c.owner,
                    parts.c.applied,
                    parts.c.duplicates,
                    parts.c.rejected,
                ).where(parts.c.partition < partitions)
            )
        }
        parked_counts = {
            int(p): int(n)
            for p, n in conn.execute(select(parked.c.partition, func.count()).group_by(parked.c.partition))
        }
        dead_counts = {
            (int(p) if p is not None else None): int(n)
            for p, n in conn.execute(
                select(dead.c.partition, func.count()).where(dead.c.replayed_at.is_(None)).group_by(dead.c.partition)
            )
        }

    queues = [queue_name(p) for p in range(partitions)]
    pipe = redis_client.pipeline(transaction=False)
    for p, queue in enumerate(queues):
        pipe.llen(queue)
        pipe.lindex(queue, -1)
        pipe.get(lease_key(p))
    pipe.eval(COUNT_UNACKED, 1, UNACKED_KEY)
    *per_queue, unacked_flat = pipe.execute()
    now = time.time()
    unacked = {_text(unacked_flat[i]): int(unacked_flat[i + 1]) for i in range(0, len(unacked_flat), 2)}

    rates = _rates(previous, now)
    entries = []
    for p, queue in enumerate(queues):
        depth, head, lease = per_queue[3 * p : 3 * p + 3]
        row = rows.get(p)
        stamp = first_stamp(head) if head is not None else None
        applied = int(row.applied) if row is not None else 0
        entries.append(
            {
                "partition": p,
                "queue": queue,
                "depth": int(depth),
                "unacked": unacked.get(queue, 0),
                "oldest_age_s": (now - stamp / 1e9) if stamp is not None else None,
                "owner": row.owner if row is not None else None,
                "epoch": int(row.epoch) if row is not None else 0,
                "lease_owner": _text(lease) if lease is not None else None,
                "applied": applied,
                "duplicates": int(row.duplicates) if row is not None else 0,
                "rejected": int(row.rejected) if row is not None else 0,
                "applied_per_s": rates(p, applied),
                "parked_keys": parked_counts.get(p, 0),
                "dead_letters": dead_counts.get(p, 0),
            }
        )

    totals: dict[str, Any] = {name: sum(int(e[name]) for e in entries) for name in _SUMMED}
    ages = [e["oldest_age_s"] for e in entries if e["oldest_age_s"] is not None]
    totals["oldest_age_s"] = max(ages) if ages else None
    per_s = [e["applied_per_s"] for e in entries]
    totals["applied_per_s"] = None if any(r is None for r in per_s) else sum(per_s)
    totals["dead_letters_other"] = sum(n for p, n in dead_counts.items() if p is None or not 0 <= p < partitions)
    totals["owners"] = len({e["owner"] for e in entries if e["owner"]})
    return {
        "partitions": entries,
        "totals": totals,
        "at": datetime.fromtimestamp(now, UTC).isoformat(),
    }


def _rates(previous: dict[str, Any] | None, now: float) -> Any:
    """partition, applied now -> events applied per second since ``previous`` (None when it cannot be told)."""
    before: dict[int, int] = {}
    elapsed = 0.0
    if previous is not None:
        try:
            elapsed = now - datetime.fromisoformat(str(previous["at"])).timestamp()
            before = {int(e["partition"]): int(e["applied"]) for e in previous["partitions"]}
        except (KeyError, TypeError, ValueError):
            before = {}

    def rate(partition: int, applied: int) -> float | None:
        if elapsed <= 0 or partition not in before or applied < before[partition]:
            return None  # no earlier sample, or the counter went back (the partition row was recreated)
        return (applied - before[partition]) / elapsed

    return rate


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def first_stamp(raw: Any) -> int | None:
    """The stamp of the first event of a queued kombu message (Celery protocol 2, body ``[args, kwargs, embed]``
    with ``kwargs["events"]``), or None if the message is not of that shape."""
    try:
        message = json.loads(raw)
        body = message["body"]
        if (message.get("properties") or {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        stamp = kwargs["events"][0]["stamp"]
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return None
    return stamp if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0 else None


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
    for column in ("applied/s", "applied", "dup", "rejected", "parked", "dead"):
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
    from models.db import make_engine

    settings = load_settings()
    if not settings.broker_url.startswith(("redis://", "rediss://")):
        raise ConfigError("seqproc status reads the queues from a Redis broker (SEQPROC_BROKER_URL)")
    engine = make_engine(settings.database_url, statement_timeout_s=10, pool_size=1)
    client = redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=10)
    sources = _sources(settings)
    title = f"seqproc status: {sources['broker']}"
    try:
        if watch:
            _watch(engine, client, settings.partitions, interval, as_json, sources, title)
            return
        snapshot = collect(engine, client, settings.partitions)
        if interval > 0:
            time.sleep(interval)
            snapshot = collect(engine, client, settings.partitions, previous=snapshot)
        if as_json:
            click.echo(json.dumps(snapshot | sources, sort_keys=True))
        else:
            Console(width=None if sys.stdout.isatty() else 160).print(render(snapshot, title=title))
    finally:
        client.close()
        engine.dispose()


def _watch(
    engine: Engine,
    client: Any,
    partitions: int,
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
                previous = collect(engine, client, partitions, previous)
                click.echo(json.dumps(previous | sources, sort_keys=True))
                time.sleep(pause)
        with Live(Text("reading..."), auto_refresh=False, console=Console()) as live:
            while True:
                view: RenderableType
                try:
                    previous = collect(engine, client, partitions, previous)
                    view = render(previous, title=title)
                except (RedisError, DBAPIError) as error:
                    previous = None
                    first = str(getattr(error, "orig", None) or error).strip().splitlines()
                    reason = first[0] if first else type(error).__name__
                    view = Text(f"unavailable: {reason}; retrying every {pause:g} s", style="red")
                live.update(view, refresh=True)
                time.sleep(pause)
    except KeyboardInterrupt:
        return
