"""The queue probe: lag and counters per partition, read straight from Redis and PostgreSQL.

``probe_queues`` (depth and oldest waiting event of some partitions: one pipeline) serves the Prometheus collector;
``collect`` (everything below, for every partition) serves ``seqproc status`` and the ``snapshot_lag`` job.
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
- ``owner``, ``epoch``: the ``partition`` table: the worker that owns the partition (``node/pid/run``), only while
  it is alive (it heartbeats in ``seqproc_worker`` and has not released the partition), and the fencing epoch it
  claimed it with. ``last_owner``: the worker that claimed it last, alive or not. ``owner_state``: ``live``,
  ``released`` (its owner exited gracefully), ``gone`` (its owner stopped heartbeating for ``SEQPROC_LEASE_S``:
  killed, paused, cut off) or ``unclaimed``. ``ownerless_s``: how long it has had no live owner (None while it
  has one, or when nothing tells: never claimed). ``lease_owner``: the holder of the partition's fetch fence
  ``seqproc:lease:seqproc.pNN`` (an auto worker's lease, or the fixed worker that claimed it last; None when nobody
  holds it: an auto lease expired, a fixed worker exited gracefully). It differs from ``owner`` while a takeover is
  under way, or when the holder is gone.
- ``applied``, ``duplicates``, ``rejected``: running totals in the ``partition`` table, raised by every apply
  transaction in the same commit as its effects.
- ``applied_per_s``: the rise of ``applied`` between two snapshots divided by the time between them; None without
  a previous snapshot. The command takes one, waits ``--interval``, takes another; ``--watch`` compares each
  refresh with the one before.
- ``outbox``, ``outbox_oldest_age_s``: events committed to the transactional outbox (``seqproc.outbox``) for the
  partition and not applied yet, and the age of the oldest; in the totals also ``outbox_unsent`` (not sent to the
  broker yet: the relay is behind, or not running).
- ``parked_keys``: rows of ``parked_key`` (entities whose events wait in the dead-letter store until
  ``seqproc deadletter replay``). ``dead_letters``: open rows of ``dead_letter`` (not replayed, retried or
  discarded); those with no partition (a message on a queue that is not a partition queue) are counted in the
  totals as ``dead_letters_other``.
- In the totals, ``workers``: the worker processes alive (heartbeating), those waiting for their partitions
  included; ``owners``: the distinct live owners; ``unowned``: the partitions without a live owner; ``lost``:
  direct-publish events declared lost (a gap in their producer's sequence that outlived ``SEQPROC_LOSS_GRACE_S``;
  ``seqproc_sequence_gap``).

Round trips: one Redis pipeline (``LLEN``, ``LINDEX -1`` and the lease ``GET`` per partition, one script counting
``unacked``) and eight SQL queries (the partition rows, their owners' liveness, the live workers, parked keys and
dead letters grouped by partition, the events declared lost, the outbox's totals and per partition).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, text

from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import DeadLetter, ParkedKey
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import lease_key, queue_name, unacked_key
from seqproc.worker.engine.sequence import lost_total
from seqproc.worker.ownership.liveness import live_workers, ownership

#: The per-partition counters summed into ``totals``.
_SUMMED = ("depth", "unacked", "applied", "duplicates", "rejected", "parked_keys", "dead_letters")


def collect(
    engine: Engine,
    redis_client: Any,
    partitions: int,
    previous: dict[str, Any] | None = None,
    *,
    outbox_engine: Engine | None = None,
) -> dict[str, Any]:
    """A snapshot of every partition (see the module docstring for each figure). With ``previous`` (an earlier
    snapshot, as returned here or read back from its JSON), ``applied_per_s`` is the rate between the two. The
    outbox is read from ``outbox_engine`` (default: ``engine``)."""
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
                    parts.c.applied,
                    parts.c.duplicates,
                    parts.c.rejected,
                ).where(parts.c.partition < partitions)
            )
        }
        owned = ownership(conn, range(partitions))
        workers = live_workers(conn)
        lost = lost_total(conn)
        parked_counts = {
            int(p): int(n)
            for p, n in conn.execute(select(parked.c.partition, func.count()).group_by(parked.c.partition))
        }
        dead_counts = {
            (int(p) if p is not None else None): int(n)
            for p, n in conn.execute(
                select(dead.c.partition, func.count()).where(DeadLetter.is_open()).group_by(dead.c.partition)
            )
        }

    outbox = outbox_depth(outbox_engine or engine)
    probes = probe_queues(redis_client, range(partitions), with_leases=True, with_unacked=True)
    now = time.time()
    rates = _rates(previous, now)
    entries = []
    for p, probe in enumerate(probes):
        row = rows.get(p)
        applied = int(row.applied) if row is not None else 0
        found = owned.get(p)
        entries.append(
            {
                "partition": p,
                "queue": probe.queue,
                "depth": probe.depth,
                "unacked": probe.unacked,
                "oldest_age_s": probe.oldest_age_s(now),
                "owner": found.owner if found is not None else None,
                "last_owner": found.last_owner if found is not None else None,
                "owner_state": found.state if found is not None else "unclaimed",
                "ownerless_s": found.ownerless_s if found is not None else None,
                "epoch": int(row.epoch) if row is not None else 0,
                "lease_owner": probe.lease_owner,
                "applied": applied,
                "duplicates": int(row.duplicates) if row is not None else 0,
                "rejected": int(row.rejected) if row is not None else 0,
                "applied_per_s": rates(p, applied),
                "parked_keys": parked_counts.get(p, 0),
                "dead_letters": dead_counts.get(p, 0),
                "outbox": outbox["by_partition"].get(p, 0),
                "outbox_oldest_age_s": outbox["oldest_by_partition"].get(p),
            }
        )

    totals: dict[str, Any] = {name: sum(int(e[name]) for e in entries) for name in _SUMMED}
    ages = [e["oldest_age_s"] for e in entries if e["oldest_age_s"] is not None]
    totals["oldest_age_s"] = max(ages) if ages else None
    per_s = [e["applied_per_s"] for e in entries]
    totals["applied_per_s"] = None if any(r is None for r in per_s) else sum(per_s)
    totals["dead_letters_other"] = sum(n for p, n in dead_counts.items() if p is None or not 0 <= p < partitions)
    totals["owners"] = len({e["owner"] for e in entries if e["owner"]})
    totals["workers"] = workers
    totals["unowned"] = sum(1 for e in entries if not e["owner"])
    totals["outbox_depth"] = outbox["depth"]
    totals["outbox_unsent"] = outbox["unsent"]
    totals["outbox_oldest_age_s"] = outbox["oldest_age_s"]
    totals["lost"] = lost
    return {
        "partitions": entries,
        "totals": totals,
        "at": datetime.fromtimestamp(now, UTC).isoformat(),
    }


@dataclass(frozen=True)
class QueueProbe:
    """One partition queue as Redis holds it now."""

    partition: int
    queue: str
    #: Messages waiting (``LLEN``).
    depth: int
    #: The producer's stamp (ns) of the first event of the next message to be taken; None: empty, or not ours.
    oldest_stamp: int | None
    #: Delivered, not acknowledged yet (only when asked for).
    unacked: int = 0
    #: Who holds the partition's fetch fence (only when asked for; None: nobody).
    lease_owner: str | None = None

    def oldest_age_s(self, now_s: float) -> float | None:
        return None if self.oldest_stamp is None else now_s - self.oldest_stamp / 1e9


def probe_queues(
    client: Any, partitions: Sequence[int] | range, *, with_leases: bool = False, with_unacked: bool = False
) -> list[QueueProbe]:
    """Depth and oldest waiting event of each of ``partitions`` (and their lease holders, and their unacked
    messages), in one pipelined round trip (on a cluster, one per node)."""
    partitions = list(partitions)
    pipe = client.pipeline(transaction=False)
    for p in partitions:
        pipe.llen(queue_name(p))
        pipe.lindex(queue_name(p), -1)
        if with_leases:
            pipe.get(lease_key(queue_name(p)))
        if with_unacked:
            pipe.hlen(unacked_key(queue_name(p)))
    replies = pipe.execute()
    step = 2 + with_leases + with_unacked
    probes = []
    for n, p in enumerate(partitions):
        depth, head, *more = replies[step * n : step * n + step]
        lease = more[:1] if with_leases else []
        unacked = int(more[-1]) if with_unacked else 0
        queue = queue_name(p)
        probes.append(
            QueueProbe(
                partition=p,
                queue=queue,
                depth=int(depth),
                oldest_stamp=first_stamp(head) if head is not None else None,
                unacked=unacked,
                lease_owner=_text(lease[0]) if lease and lease[0] is not None else None,
            )
        )
    return probes


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


_DEPTH = text(
    """
    SELECT count(*), count(*) FILTER (WHERE push_seq IS NULL),
           EXTRACT(EPOCH FROM now() - min(created_at))
    FROM seqproc_outbox
    """
)
_DEPTH_BY_PARTITION = text(
    "SELECT partition, count(*), EXTRACT(EPOCH FROM now() - min(created_at)) FROM seqproc_outbox GROUP BY partition"
)


def outbox_depth(engine: Engine) -> dict[str, Any]:
    """Events in the outbox (committed, not applied yet): all (``depth``), not sent yet (``unsent``), the oldest
    one's age in seconds (None when empty), and per partition (``by_partition``: count; ``oldest_by_partition``:
    age). The outbox table missing (never migrated there): zeros, ``migrated`` False."""
    with engine.connect() as conn:
        if not _has_outbox(conn):
            return {
                "depth": 0,
                "unsent": 0,
                "oldest_age_s": None,
                "by_partition": {},
                "oldest_by_partition": {},
                "migrated": False,
            }
        depth, unsent, oldest = conn.execute(_DEPTH).one()
        rows = conn.execute(_DEPTH_BY_PARTITION).all()
    return {
        "depth": int(depth),
        "unsent": int(unsent),
        "oldest_age_s": float(oldest) if oldest is not None else None,
        "by_partition": {int(p): int(n) for p, n, _ in rows},
        "oldest_by_partition": {int(p): float(age) for p, _, age in rows},
        "migrated": True,
    }


def _has_outbox(conn: Connection) -> bool:
    return bool(conn.execute(text("SELECT to_regclass('seqproc_outbox') IS NOT NULL")).scalar())
