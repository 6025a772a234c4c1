"""Singleton scheduled jobs: one run at a time across every host, once per scheduled slot.

Two mechanisms, because neither is enough alone:

- a Redis lock (redis-py's ``Lock``: owner token, time limit, released only by its owner), taken when the job starts
  and renewed by a thread while it runs; with several Redis masters (``SEQPROC_LOCK_URLS``) a Redlock quorum over them
  (pottery). A second start while one runs is skipped and logged. A job whose lock expired (its process stalled past
  the time limit) is no longer the owner and stops before its next write (:meth:`Singleton.check`).
- a database row per (job, slot), inserted with ``ON CONFLICT DO NOTHING``: a lock cannot fence (a stalled owner may
  still write after its lock expired), and two beats may fire the same slot one after the other, so the slot key is
  what makes a second fire of a slot do nothing.

The renewal thread is started by the process that runs the job, after any fork (the lock and its Redis client are
created there too), so a job run in a forked pool process renews its own lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import redis
from sqlalchemy import Engine, select, update
from sqlalchemy.dialects import postgresql, sqlite

from seqproc.models.clients import broker_client, redis_client
from seqproc.models.errors import LockLost, LockNotAcquired
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.jobs import JobRun
from seqproc.models.wire import job_lock_key

logger = logging.getLogger(__name__)

JOB_RUNS = table_of(JobRun)


class JobLock(Protocol):
    def acquire(self) -> bool: ...

    def extend(self) -> bool: ...

    def owned(self) -> bool: ...

    def release(self) -> None: ...


class RedisJobLock:
    """redis-py's Lock on one Redis: token, time limit, compare-and-delete release."""

    def __init__(self, client: redis.Redis, name: str, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        # thread_local=False: the renewal thread must see the token the job's thread acquired.
        self.lock = client.lock(name, timeout=ttl_s, blocking=False, thread_local=False)

    def acquire(self) -> bool:
        return bool(self.lock.acquire(blocking=False))

    def extend(self) -> bool:
        try:
            return bool(self.lock.extend(self.ttl_s, replace_ttl=True))
        except redis.exceptions.LockError:
            return False

    def owned(self) -> bool:
        return bool(self.lock.owned())

    def release(self) -> None:
        try:
            self.lock.release()
        except redis.exceptions.LockError:
            logger.warning("lock %s was no longer ours at release", self.lock.name)


class RedlockJobLock:
    """A Redlock quorum over several independent Redis masters (pottery)."""

    def __init__(self, clients: list[redis.Redis], name: str, ttl_s: float) -> None:
        from pottery import Redlock

        self.lock = Redlock(key=name, masters=set(clients), auto_release_time=ttl_s, num_extensions=1_000_000_000)

    def acquire(self) -> bool:
        return bool(self.lock.acquire(blocking=False))

    def extend(self) -> bool:
        try:
            self.lock.extend()
            return True
        except Exception:
            return False

    def owned(self) -> bool:
        return bool(self.lock.locked())

    def release(self) -> None:
        try:
            self.lock.release()
        except Exception:
            logger.warning("redlock %s was no longer ours at release", self.lock.key)


def make_lock(settings: Settings, job: str, ttl_s: float) -> JobLock:
    if settings.lock_urls:
        clients = [
            redis_client(url, timeout_s=5, sentinel_master=settings.sentinel_master) for url in settings.lock_urls
        ]
    else:
        clients = [broker_client(settings, timeout_s=5)]
    name = job_lock_key(job)
    if len(clients) == 1:
        return RedisJobLock(clients[0], name, ttl_s)
    return RedlockJobLock(clients, name, ttl_s)


def slot_of(now_s: float, interval_s: float) -> datetime:
    """The scheduled slot a run belongs to: the start of its interval, on the wall clock (the same for every beat)."""
    return datetime.fromtimestamp(now_s - now_s % interval_s, tz=UTC)


@dataclass
class Singleton:
    """A running job: ``check()`` before every write raises :class:`LockLost` once the lock is no longer ours."""

    job: str
    slot: datetime
    lock: JobLock
    #: What the run did, kept in its ``job_run`` row.
    detail: str | None = None

    def check(self) -> None:
        if not self.lock.owned():
            raise LockLost(f"job {self.job} (slot {self.slot.isoformat()}): lost its lock; stopping before it writes")


@contextmanager
def singleton(engine: Engine, settings: Settings, job: str, *, interval_s: float) -> Iterator[Singleton]:
    """Run the body once per slot and never twice at a time. Raises :class:`LockNotAcquired` when another run holds
    the lock, and ``SlotAlreadyRun`` (a LockNotAcquired) when this slot already ran: callers log and skip."""
    ttl_s = settings.job_lock_s
    lock = make_lock(settings, job, ttl_s)
    if not lock.acquire():
        raise LockNotAcquired(f"job {job}: another run holds the lock; skipped")
    stop = threading.Event()
    renewer = threading.Thread(target=_renew, args=(lock, stop, ttl_s / 3, job), name=f"renew-{job}", daemon=True)
    renewer.start()
    try:
        slot = slot_of(time.time(), interval_s)
        _abandon_dead_runs(engine, job)
        if not _claim_slot(engine, job, slot):
            raise SlotAlreadyRun(f"job {job}: slot {slot.isoformat()} already ran; skipped")
        running = Singleton(job, slot, lock)
        status = "failed"
        try:
            yield running
            status = "done"
        finally:
            _finish_slot(engine, job, slot, status, running.detail)
    finally:
        stop.set()
        renewer.join(5)
        lock.release()


class SlotAlreadyRun(LockNotAcquired):
    """This (job, slot) already has a run: a second fire of the same slot does nothing."""


def _renew(lock: JobLock, stop: threading.Event, every_s: float, job: str) -> None:
    while not stop.wait(every_s):
        if not lock.extend():
            logger.error("job %s: could not renew its lock; it will stop before its next write", job)
            return


def _claim_slot(engine: Engine, job: str, slot: datetime) -> bool:
    with engine.begin() as conn:
        dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
        inserted = conn.execute(
            dialect.insert(JOB_RUNS)
            .values(job=job, slot=slot, status="running")
            .on_conflict_do_nothing(index_elements=[JOB_RUNS.c.job, JOB_RUNS.c.slot])
            .returning(JOB_RUNS.c.job)
        ).first()
    return inserted is not None


def _finish_slot(engine: Engine, job: str, slot: datetime, status: str, detail: str | None) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(JOB_RUNS)
            .where(JOB_RUNS.c.job == job, JOB_RUNS.c.slot == slot, JOB_RUNS.c.status == "running")
            .values(status=status, finished_at=datetime.now(UTC), detail=detail)
        )


def _abandon_dead_runs(engine: Engine, job: str) -> None:
    """We hold the job's lock, so no other run of it is alive: a ``running`` row left is a run that died (killed,
    or stalled past its lock and stopped). Mark it, so that the table tells what happened."""
    with engine.begin() as conn:
        conn.execute(
            update(JOB_RUNS)
            .where(JOB_RUNS.c.job == job, JOB_RUNS.c.status == "running")
            .values(status="abandoned", finished_at=datetime.now(UTC))
        )


def last_run_started(engine: Engine, job: str) -> datetime | None:
    """When the previous completed run of ``job`` started (None: never ran)."""
    with engine.connect() as conn:
        return conn.execute(
            select(JOB_RUNS.c.started_at)
            .where(JOB_RUNS.c.job == job, JOB_RUNS.c.status == "done")
            .order_by(JOB_RUNS.c.slot.desc())
            .limit(1)
        ).scalar_one_or_none()


__all__ = ["LockLost", "LockNotAcquired", "Singleton", "SlotAlreadyRun", "last_run_started", "singleton"]
