"""The scheduled jobs that ``seqproc beat`` runs (:data:`JOBS`, registered by ``worker.beat.schedule``), each a
singleton (``worker.beat.singleton``): one run at a time across every host, once per slot. Jobs never write what a
partition's worker writes: fixes and releases go through the partition queues, so they are applied in order by the
single writer of each key.

- ``reconcile``: recount the like rows of the articles touched since the last run; for each whose like_count drifted,
  send a ``reconcile`` event through its partition queue (the worker recounts in its own transaction); log the fixes.
- ``purge_ledger``: delete idempotency keys older than the dedup window, in bounded chunks, except those of events
  still in the outbox (the relay could send them again).
- ``expire_reservations``: send a release for each reservation left active past its time limit.
- ``snapshot_lag``: record each partition's queue depth, oldest waiting event and applied count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, inspect, select

from seqproc.domains.likes import Reconcile
from seqproc.models.clients import broker_client
from seqproc.models.db import outbox_engine, upsert
from seqproc.models.errors import LockNotAcquired
from seqproc.models.fields import ReservationStatus
from seqproc.models.settings import Settings
from seqproc.models.stamps import next_stamp, unique_id
from seqproc.models.tables.base import table_of
from seqproc.models.tables.jobs import PartitionLag
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.likes import ArticleLike, ArticleLikeCount
from seqproc.models.tables.outbox import OUTBOX_TABLE, OutboxEvent
from seqproc.models.tables.stock import Reservation
from seqproc.models.wire import JOB_TASK_PREFIX
from seqproc.producer.publish import publisher_for
from seqproc.worker import faults
from seqproc.worker.beat.singleton import Singleton, last_run_started, singleton
from seqproc.worker.ops.lag import collect
from seqproc.worker.runtime import Runtime

logger = logging.getLogger(__name__)

#: Expired reservations released per run at most (the next run takes the rest).
EXPIRE_BATCH = 10_000


#: What a job runs: it reads and sends with the beat's settings and engine, checks its lock (``run.check()``)
#: before each write, and returns a line saying what it did.
JobBody = Callable[[Engine, Settings, Singleton], str]


@dataclass(frozen=True)
class Job:
    """A scheduled job: ``body`` runs every ``getattr(settings, interval_setting)`` seconds, once per slot across
    every beat."""

    name: str
    body: JobBody
    #: The setting that names its interval (``reconcile_interval_s``: ``SEQPROC_RECONCILE_INTERVAL_S``).
    interval_setting: str

    @property
    def task_name(self) -> str:
        return f"{JOB_TASK_PREFIX}{self.name}"

    def interval_s(self, settings: Settings) -> float:
        return float(getattr(settings, self.interval_setting))


def run_job(rt: Runtime, job: Job) -> str:
    """Run ``job`` as a singleton with the beat process's settings and engine; log and return what it did, or why
    it was skipped."""
    settings, engine = rt.settings, rt.engine
    try:
        with singleton(engine, settings, job.name, interval_s=job.interval_s(settings)) as run:
            faults.job_delay()
            run.check()
            detail = run.detail = job.body(engine, settings, run)
    except LockNotAcquired as skipped:
        logger.info("%s", skipped)
        return f"skipped: {skipped}"
    logger.info("job %s (slot %s): %s", job.name, run.slot.isoformat(), detail)
    return detail


def reconcile(engine: Engine, settings: Settings, run: Singleton) -> str:
    since = last_run_started(engine, "reconcile") or datetime.fromtimestamp(0, tz=UTC)
    since -= timedelta(seconds=settings.reconcile_interval_s)  # overlap: a write racing the last run is seen again
    rows = func.count(ArticleLike.user_id)
    with engine.connect() as conn:
        drifted = conn.execute(
            select(ArticleLikeCount.article_id, ArticleLikeCount.like_count, rows)
            .outerjoin(ArticleLike, ArticleLike.article_id == ArticleLikeCount.article_id)
            .where(ArticleLikeCount.updated_at >= since)
            .group_by(ArticleLikeCount.article_id, ArticleLikeCount.like_count)
            .having(ArticleLikeCount.like_count != rows)
        ).all()
    if not drifted:
        return "no drift"
    run.check()
    events = [
        Reconcile(key=unique_id(), id=unique_id(), stamp=next_stamp(), article_id=article_id)
        for article_id, _, _ in drifted
    ]
    publisher_for(settings).publish(events)
    fixes = ", ".join(f"article {a}: like_count {c} -> {n} rows" for a, c, n in drifted[:20])
    return f"sent {len(drifted)} fix(es) through the partition queues: {fixes}"


def purge_ledger(engine: Engine, settings: Settings, run: Singleton) -> str:
    """Delete ledger keys older than the dedup window, except those of events still in the outbox: the relay sends
    a row again (after a broker loss, or until it sees the key) for as long as the row exists, and without its key
    the ledger would apply that copy a second time."""
    ledger = table_of(LedgerEntry)
    cutoff = datetime.now(UTC) - timedelta(days=settings.dedup_window_days)
    purged = kept = 0
    after = ""  # keys in order, so that kept keys are read once per run, not again by every chunk
    with _migrated_outbox(engine, settings) as outbox:
        while True:
            run.check()  # before every chunk: a job that lost its lock stops here
            with engine.connect() as conn:
                old = (
                    conn.execute(
                        select(ledger.c.key)
                        .where(ledger.c.applied_at < cutoff, ledger.c.key > after)
                        .order_by(ledger.c.key)
                        .limit(settings.purge_chunk)
                    )
                    .scalars()
                    .all()
                )
            if not old:
                break
            pending = _in_outbox(outbox, old)
            kept += len(pending)
            run.check()
            with engine.begin() as conn:
                for part in _slices([key for key in old if key not in pending]):
                    purged += conn.execute(
                        delete(ledger).where(ledger.c.key.in_(part), ledger.c.applied_at < cutoff)
                    ).rowcount
            after = old[-1]
            if len(old) < settings.purge_chunk:
                break
    detail = f"purged {purged} key(s) older than {cutoff.isoformat()}"
    return f"{detail}; kept {kept} of events still in the outbox" if kept else detail


#: Keys per ``IN`` list (the purge chunk may be far larger than a statement should carry).
_IN_LIST = 1_000


def _slices(keys: list[str]) -> list[list[str]]:
    return [keys[start : start + _IN_LIST] for start in range(0, len(keys), _IN_LIST)]


@contextmanager
def _migrated_outbox(engine: Engine, settings: Settings) -> Iterator[Engine | None]:
    """The engine of the outbox's database (:func:`outbox_engine`), or None when that database has no outbox table
    (never migrated there: the outbox is not used)."""
    with outbox_engine(settings, engine) as outbox:
        yield outbox if inspect(outbox).has_table(OUTBOX_TABLE) else None


def _in_outbox(outbox: Engine | None, keys: Sequence[str]) -> set[str]:
    """Of ``keys``, the ledger keys of rows still in the outbox."""
    if outbox is None:
        return set()
    found: set[str] = set()
    with outbox.connect() as conn:
        for part in _slices(list(keys)):
            found.update(conn.execute(select(OutboxEvent.ledger_key).where(OutboxEvent.ledger_key.in_(part))).scalars())
    return found


def expire_reservations(engine: Engine, settings: Settings, run: Singleton) -> str:
    with engine.connect() as conn:
        expired = conn.execute(
            select(Reservation.product_id, Reservation.reservation_id)
            .where(Reservation.status == ReservationStatus.ACTIVE.value, Reservation.expires_at < func.now())
            .order_by(Reservation.expires_at)
            .limit(EXPIRE_BATCH)
        ).all()
    if not expired:
        return "nothing expired"
    run.check()
    from seqproc.producer.build import build_event

    # A release keyed like the caller's own ("release:<id>"): if the caller releases too, one of them is a duplicate.
    events = [build_event("release", {"product_id": p, "reservation_id": r}) for p, r in expired]
    publisher_for(settings).publish(events)
    return f"sent {len(events)} release(s) through the partition queues"


def snapshot_lag(engine: Engine, settings: Settings, run: Singleton) -> str:
    client = broker_client(settings)
    try:
        with outbox_engine(settings, engine) as outbox:
            snapshot = collect(engine, client, settings.partitions, outbox_engine=outbox)
    finally:
        client.close()
    rows: list[dict[str, Any]] = [
        {
            "partition": p["partition"],
            "depth": p["depth"],
            "oldest_age_s": p["oldest_age_s"],
            "applied": p["applied"],
            "outbox_depth": p["outbox"],
            "outbox_oldest_age_s": p["outbox_oldest_age_s"],
        }
        for p in snapshot["partitions"]
    ]
    run.check()
    lag = table_of(PartitionLag)
    with engine.begin() as conn:
        stmt = upsert(conn, lag)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[lag.c.partition],
                set_={
                    "depth": stmt.excluded.depth,
                    "oldest_age_s": stmt.excluded.oldest_age_s,
                    "applied": stmt.excluded.applied,
                    "outbox_depth": stmt.excluded.outbox_depth,
                    "outbox_oldest_age_s": stmt.excluded.outbox_oldest_age_s,
                    "at": func.now(),
                },
            ),
            rows,
        )
    waiting = sum(r["depth"] for r in rows)
    oldest = max((r["oldest_age_s"] or 0.0 for r in rows), default=0.0)
    outbox = snapshot["totals"]
    return (
        f"{waiting} message(s) waiting, oldest event {oldest:.1f} s old; "
        f"outbox {outbox['outbox_depth']} event(s) not applied ({outbox['outbox_unsent']} unsent)"
    )


#: The scheduled jobs, each with the setting that names its interval: ``seqproc beat`` registers them.
JOBS: tuple[Job, ...] = (
    Job("reconcile", reconcile, "reconcile_interval_s"),
    Job("purge_ledger", purge_ledger, "purge_interval_s"),
    Job("expire_reservations", expire_reservations, "expire_interval_s"),
    Job("snapshot_lag", snapshot_lag, "lag_snapshot_interval_s"),
)

__all__ = ["JOBS", "Job", "expire_reservations", "purge_ledger", "reconcile", "run_job", "snapshot_lag"]
