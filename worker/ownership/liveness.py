"""Worker liveness, kept in PostgreSQL beside the fencing epochs: which workers are alive, and which partitions have
no live owner.

- Every ``seqproc worker`` process has a row in ``seqproc_worker`` and heartbeats in it every third of
  ``SEQPROC_LEASE_S``, from its consumer's loop (``LeaseStep``), pushing ``expires_at`` one ``SEQPROC_LEASE_S``
  ahead by the database's clock (the hosts' clocks are never compared). A graceful exit deletes the row.
- A partition's owner (``partition.owner``: who claimed it last) owns it while its row is ahead and it has not
  released the partition (``partition.released_at``, set by a graceful exit). Otherwise the partition has no owner:
  a static worker configured for it resumes it (:mod:`.static`), and ``seqproc status`` shows it ownerless, with
  how long (since the release, or since the owner's row expired).

Why PostgreSQL and not Redis: the epochs live there, so a claim reads the previous owner's liveness and raises the
epoch in one transaction, under the partition row's lock, whatever the broker (Redis or AMQP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, case, delete, exists, func, select, update

from seqproc.models.db import upsert
from seqproc.models.tables.base import table_of
from seqproc.models.tables.partition import Partition, Worker
from seqproc.worker.engine.sequence import Gap, declare_lost

logger = logging.getLogger(__name__)

PARTITIONS = table_of(Partition)
WORKERS = table_of(Worker)

#: A worker heartbeats this many times per liveness time limit (``SEQPROC_LEASE_S``): a heartbeat or two may come
#: late (a long batch in the consumer's loop) before it counts as gone.
BEATS_PER_LIMIT = 3
#: Rows of workers gone this long, that own no partition any more, are deleted when a worker starts.
FORGET_GONE_AFTER_S = 24 * 3600.0


@dataclass(frozen=True)
class Ownership:
    """A partition's ownership as the database sees it now."""

    partition: int
    epoch: int
    #: Who claimed it last (None: never claimed).
    last_owner: str | None
    #: ``last_owner`` still owns it: it heartbeats and has not released it.
    live: bool
    #: ``last_owner`` exited gracefully and released it.
    released: bool
    #: How long it has had no live owner: since the release, or since the owner's heartbeat ran out (None: it has
    #: a live owner, was never claimed, or its owner left no heartbeat to tell).
    ownerless_s: float | None

    @property
    def owner(self) -> str | None:
        """The live owner, or None."""
        return self.last_owner if self.live else None

    @property
    def state(self) -> str:
        """``live``, ``released`` (its owner exited gracefully), ``gone`` (its owner stopped heartbeating: killed,
        paused, cut off) or ``unclaimed``."""
        if self.live:
            return "live"
        if self.released:
            return "released"
        return "gone" if self.last_owner else "unclaimed"

    def describe(self) -> str:
        """For a log line: ``X (alive)``, ``X (released 0.4 s ago)``, ``X (gone: no heartbeat for 12.0 s)``."""
        since = f"{self.ownerless_s:.1f} s" if self.ownerless_s is not None else "a while"
        if self.live:
            return f"{self.last_owner} (alive)"
        if self.released:
            return f"{self.last_owner} (released {since} ago)"
        if self.last_owner:
            return f"{self.last_owner} (gone: no heartbeat for {since})"
        return "nobody"


def _ahead(conn: Connection, seconds: float) -> Any:
    """``seconds`` from now by the database's clock (PostgreSQL); by this host's elsewhere (SQLite: one host)."""
    if conn.dialect.name == "postgresql":
        return func.now() + timedelta(seconds=seconds)
    return datetime.now(UTC) + timedelta(seconds=seconds)


def beat(
    conn: Connection, owner: str, *, partitions: str, liveness_s: float, loss_grace_s: float | None = None
) -> list[Gap]:
    """Record that ``owner`` (started for ``partitions``, as given) is alive for ``liveness_s`` more; with
    ``loss_grace_s``, declare lost the sequence gaps open for longer (``worker.engine.sequence``): logged here, and
    returned for the caller to count (``seqproc_events_lost_total``) once its transaction committed."""
    expires = _ahead(conn, liveness_s)
    conn.execute(
        upsert(conn, WORKERS)
        .values(owner=owner, partitions=partitions, expires_at=expires)
        .on_conflict_do_update(index_elements=[WORKERS.c.owner], set_={"expires_at": expires})
    )
    if loss_grace_s is None:
        return []
    lost = declare_lost(conn, grace_s=loss_grace_s)
    for gap in lost:
        logger.error(
            "partition %d: %d event(s) LOST from producer %s (its events %d-%d never arrived, %g s after later "
            "ones did): a broker failover dropped pushes it had acknowledged",
            gap.partition,
            gap.count,
            gap.producer,
            gap.first,
            gap.first + gap.count - 1,
            loss_grace_s,
        )
    return lost


def ownership(conn: Connection, partitions: Iterable[int] | None = None, *, lock: bool = False) -> dict[int, Ownership]:
    """Each of ``partitions`` (None: every one) that has a row: its epoch, last owner and that owner's liveness.
    ``lock``: take the rows' locks (FOR UPDATE, in partition order), as a claim does before it raises their
    epochs."""
    p, w = PARTITIONS, WORKERS
    now = func.now()
    live = and_(p.c.owner.is_not(None), p.c.released_at.is_(None), w.c.expires_at > now)
    query = select(
        p.c.partition,
        p.c.epoch,
        p.c.owner,
        p.c.released_at,
        w.c.expires_at,
        case((live, True), else_=False).label("live"),
        now.label("now"),
    ).select_from(p.outerjoin(w, w.c.owner == p.c.owner))
    # In partition order: two claims lock the rows they share in the same order, so neither waits on the other.
    query = query.order_by(p.c.partition)
    if partitions is not None:
        query = query.where(p.c.partition.in_(list(partitions)))
    if lock:
        query = query.with_for_update(of=p)
    found = {}
    for row in conn.execute(query):
        alive = bool(row.live)
        since = None if alive else (row.released_at or row.expires_at)
        found[int(row.partition)] = Ownership(
            partition=int(row.partition),
            epoch=int(row.epoch),
            last_owner=row.owner,
            live=alive,
            released=row.released_at is not None,
            ownerless_s=_seconds_between(since, row.now) if since is not None else None,
        )
    return found


def _seconds_between(earlier: Any, now: Any) -> float | None:
    if not isinstance(earlier, datetime) or not isinstance(now, datetime):
        return None
    if (earlier.tzinfo is None) != (now.tzinfo is None):  # SQLite hands back naive UTC times
        earlier, now = earlier.replace(tzinfo=None), now.replace(tzinfo=None)
    return max(0.0, float((now - earlier).total_seconds()))


def live_workers(conn: Connection) -> int:
    """How many worker processes are alive (heartbeating), whether they own partitions or wait for them."""
    return int(conn.execute(select(func.count()).where(WORKERS.c.expires_at > func.now())).scalar_one())


def release(engine: Engine, owner: str) -> list[int]:
    """A graceful exit: mark the partitions ``owner`` still owns released (the workers configured for them resume
    them at once), and delete its heartbeat. Returns the partitions released."""
    with engine.begin() as conn:
        released = sorted(
            int(partition)
            for partition in conn.execute(
                update(PARTITIONS)
                .where(PARTITIONS.c.owner == owner, PARTITIONS.c.released_at.is_(None))
                .values(released_at=func.now())
                .returning(PARTITIONS.c.partition)
            ).scalars()
        )
        conn.execute(delete(WORKERS).where(WORKERS.c.owner == owner))
    if released:
        logger.info("released partitions %s (%s exits)", ",".join(map(str, released)), owner)
    return released


def forget_gone(conn: Connection, *, after_s: float = FORGET_GONE_AFTER_S) -> int:
    """Delete the rows of workers gone for ``after_s`` that own no partition (killed workers leave theirs)."""
    owns = exists().where(PARTITIONS.c.owner == WORKERS.c.owner)
    gone = conn.execute(delete(WORKERS).where(WORKERS.c.expires_at < _ahead(conn, -after_s), ~owns))
    return int(gone.rowcount or 0)


def holder_of(engine: Engine, partition: int) -> str:
    """Who holds ``partition`` now, for the log line of a worker that found itself fenced there."""
    try:
        with engine.connect() as conn:
            found = ownership(conn, [partition]).get(partition)
    except Exception as error:  # the log line must not fail: it is written on an error path already
        return f"another worker (could not read which: {type(error).__name__})"
    return found.describe() if found is not None else "nobody"
