"""`seqproc beat` against the real services: every scheduled job is a singleton (once per slot, never overlapping
itself, even with two beats, a killed run or a run slower than its interval), and each does its work."""

from __future__ import annotations

import itertools
import multiprocessing
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, insert, select, update

from seqproc import producer
from seqproc.models.errors import LockLost, LockNotAcquired
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.jobs import JobRun, PartitionLag
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.likes import ArticleLikeCount
from seqproc.models.tables.stock import Reservation
from seqproc.models.wire import job_lock_key
from seqproc.worker.beat.jobs import purge_ledger
from seqproc.worker.beat.singleton import RedisJobLock, RedlockJobLock, SlotAlreadyRun, make_lock, singleton
from seqproc.worker.ops.inspect import article_state, product_state
from tests.conftest import ROOT, LoggedProcess, PrivateRedis, WorkerProcess, settings_env, wait_for

pytestmark = pytest.mark.services

JOBS = ("reconcile", "purge_ledger", "expire_reservations", "snapshot_lag")
NEVER = "86400"  # an interval no test waits for: that job does not fire


class BeatProcess(LoggedProcess):
    """A real ``seqproc beat`` in a session of its own: its embedded scheduler is a child process, and a SIGKILL
    of the whole group is what a host or container failure does."""

    what = "beat"

    def __init__(self, settings: Settings, log_dir: Path, name: str, **env: str) -> None:
        argv = ["seqproc", "beat", "--loglevel", "INFO", "--hostname", f"beat-{name}@test"]
        super().__init__(argv, settings, log_dir / f"beat-{name}.log", session=True, **env)

    def wait_ready(self, timeout_s: float = 30) -> BeatProcess:
        self.wait_until(lambda: " ready." in self.log(), timeout_s, "beat ready")
        return self

    def stop(self, timeout_s: float = 20) -> int:
        return super().stop(timeout_s)


@pytest.fixture
def start_beat(tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    started: list[BeatProcess] = []

    def start(settings: Settings, name: str, **env: str) -> BeatProcess:
        beat = BeatProcess(settings, tmp_path, name, **env)
        started.append(beat)
        return beat.wait_ready()

    yield start
    for beat in started:
        beat.stop()


def intervals(**seconds: str) -> dict[str, str]:
    """The environment of a beat whose jobs fire at these intervals (the others never)."""
    env = {f"SEQPROC_{job.upper()}_INTERVAL_S": NEVER for job in ("reconcile", "purge", "expire", "lag_snapshot")}
    env.update({f"SEQPROC_{job.upper()}_INTERVAL_S": value for job, value in seconds.items()})
    return env


def runs(engine: Engine, job: str) -> list[Any]:
    runs_table = table_of(JobRun)
    with engine.connect() as conn:
        return conn.execute(select(runs_table).where(runs_table.c.job == job).order_by(runs_table.c.slot)).all()


def skipped(logs: str, job: str) -> int:
    return len(re.findall(rf"job {job}: (another run holds the lock|slot \S+ already ran); skipped", logs))


def test_two_beats_run_each_job_once_per_slot_and_each_job_does_its_work(
    clean: Settings,
    engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    start_beat: Callable[..., BeatProcess],
) -> None:
    worker = start_worker(clean)
    article, product = 31, 32
    assert all(o.status == "applied" for o in producer.wait_all([producer.like(article, u) for u in (1, 2, 3)], 30))
    assert producer.restock(product, 5).wait(timeout_s=30).status == "applied"
    assert producer.reserve(product, 2, reservation_id="beat-expired").wait(timeout_s=30).status == "applied"
    assert producer.reserve(product, 1, reservation_id="beat-current").wait(timeout_s=30).status == "applied"
    ledger = table_of(LedgerEntry)
    old = datetime.now(UTC) - timedelta(days=clean.dedup_window_days + 1)
    with engine.begin() as conn:
        # Drift, as a bug or a hand edit would leave it: 7 counted, 3 rows.
        conn.execute(update(ArticleLikeCount).where(ArticleLikeCount.article_id == article).values(like_count=7))
        conn.execute(
            update(Reservation)
            .where(Reservation.reservation_id == "beat-expired")
            .values(expires_at=func.now() - timedelta(seconds=1))
        )
        conn.execute(
            insert(ledger),
            [{"key": f"old-{i}", "partition": 0, "event_type": "like", "applied_at": old} for i in range(12)],
        )
        kept = conn.execute(select(func.count()).select_from(ledger)).scalar_one()
    kept -= 12

    env = intervals(reconcile="2", purge="2", expire="2", lag_snapshot="2") | {"SEQPROC_PURGE_CHUNK": "5"}
    beats = [start_beat(clean, "a", **env), start_beat(clean, "b", **env)]
    wait_for(lambda: all(len([r for r in runs(engine, job) if r.status == "done"]) >= 4 for job in JOBS), 60, "4 slots")
    for beat in beats:
        beat.stop()
    logs = "".join(beat.log() for beat in beats)

    for job in JOBS:
        done = [r for r in runs(engine, job) if r.status == "done"]
        assert len({r.slot for r in done}) == len(done)
        # Both beats fired the job in most slots; all but one fire per slot were skipped.
        assert skipped(logs, job) >= 1, f"{job}: no second fire was ever skipped"
        assert all(r.status in ("done", "running") for r in runs(engine, job))

    with engine.connect() as conn:
        # reconcile: found the drift once, sent ONE fix through the partition queue; the worker recounted.
        assert article_state(conn, article)["like_count"] == 3
        fixes = conn.execute(select(func.count()).select_from(ledger).where(ledger.c.event_type == "reconcile"))
        assert fixes.scalar_one() == 1
        fixed = f"article {article}: like_count 7 -> 3 rows"
        assert len([line for line in logs.splitlines() if "seqproc.worker.beat.jobs" in line and fixed in line]) == 1
        # expire_reservations: the expired one released once (its 2 back), the current one untouched.
        statuses = dict(conn.execute(select(Reservation.reservation_id, Reservation.status)).all())
        assert statuses == {"beat-expired": "released", "beat-current": "active"}
        assert product_state(conn, product)["available"] == 4
        assert product_state(conn, product)["reserved"] == 1
        # purge_ledger: the 12 old keys gone, in chunks of 5; every recent key kept.
        assert (
            conn.execute(select(func.count()).select_from(ledger).where(ledger.c.key.like("old-%"))).scalar_one() == 0
        )
        recent = conn.execute(select(func.count()).select_from(ledger).where(ledger.c.key.not_like("old-%")))
        assert recent.scalar_one() >= kept
        purged = [r.detail for r in runs(engine, "purge_ledger") if r.detail]
        assert sum(int(re.match(r"purged (\d+)", d).group(1)) for d in purged) == 12  # type: ignore[union-attr]
        # snapshot_lag: one fresh row per partition.
        lag = conn.execute(select(PartitionLag.partition, PartitionLag.depth)).all()
        assert sorted(p for p, _ in lag) == list(range(clean.partitions))
    assert "release" not in " ".join(line for line in worker.log().splitlines() if "outcome=duplicate" in line)


def test_a_job_killed_mid_run_loses_its_lock_and_the_next_slot_runs(
    clean: Settings, engine: Engine, start_beat: Callable[..., BeatProcess]
) -> None:
    lock_s = 3
    env = intervals(reconcile="2") | {"SEQPROC_JOB_LOCK_S": str(lock_s)}
    beat = start_beat(clean, "doomed", **env, SEQPROC_FAULT_JOB_DELAY_S="60")
    wait_for(lambda: [r for r in runs(engine, "reconcile") if r.status == "running"], 30, "a reconcile run in progress")
    client = redis.Redis.from_url(clean.broker_url)
    lock_key = job_lock_key("reconcile")
    assert client.exists(lock_key)
    beat.kill()  # SIGKILL mid-run: nobody releases the lock
    killed_at = time.monotonic()
    wait_for(lambda: not client.exists(lock_key), lock_s + 2, "the dead run's lock to expire")
    assert time.monotonic() - killed_at <= lock_s + 1

    start_beat(clean, "next", **env)
    wait_for(lambda: [r for r in runs(engine, "reconcile") if r.status == "done"], 30, "the next slot's run")
    rows = runs(engine, "reconcile")
    killed = rows[0]
    assert killed.status == "abandoned"  # the next run, holding the lock, marked the dead one
    assert all(r.slot > killed.slot for r in rows[1:])


def test_a_job_slower_than_its_interval_never_overlaps_itself(
    clean: Settings, engine: Engine, start_beat: Callable[..., BeatProcess]
) -> None:
    """Each run takes 2.5 s; it fires every 1 s from two beats; its lock lasts 1.5 s unless renewed (every 0.5 s).
    Only a renewed lock lets a run end ``done`` (without renewal each would lose it at 1.5 s and stop, ``failed``,
    before its write). A loaded machine may delay a renewal past the lock's life: that run must then stop before it
    writes, which is what the guarantee says; the runs that wrote never overlapped."""
    env = intervals(reconcile="1") | {"SEQPROC_JOB_LOCK_S": "1.5", "SEQPROC_FAULT_JOB_DELAY_S": "2.5"}
    beats = [start_beat(clean, "a", **env), start_beat(clean, "b", **env)]
    wait_for(lambda: len([r for r in runs(engine, "reconcile") if r.status == "done"]) >= 3, 60, "3 runs done")
    for beat in beats:
        beat.stop()
    finished = [r for r in runs(engine, "reconcile") if r.finished_at is not None]
    spans = sorted((r.started_at, r.finished_at) for r in finished if r.status == "done")
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"runs overlapped: one started at {start} before the last ended at {end}"
    logs = "".join(beat.log() for beat in beats)
    assert len(re.findall(r"job reconcile: another run holds the lock; skipped", logs)) >= 1
    # A renewal missed (the lock expired under a run) shows as a run that stopped before its write, failed: every
    # run not done is one that said it lost its lock.
    lost = {datetime.fromisoformat(slot) for slot in re.findall(r"job reconcile \(slot (\S+)\): lost its lock", logs)}
    failed = [r for r in finished if r.status != "done"]
    assert {r.status for r in failed} <= {"failed", "abandoned"}  # abandoned: the next run took the lock meanwhile
    assert {r.slot for r in failed} <= lost, f"runs not done that never said they lost their lock: {failed}"


def test_a_job_that_lost_its_lock_stops_before_it_writes(clean: Settings, engine: Engine) -> None:
    ledger = table_of(LedgerEntry)
    old = datetime.now(UTC) - timedelta(days=clean.dedup_window_days + 1)
    with engine.begin() as conn:
        conn.execute(
            insert(ledger),
            [{"key": f"old-{i}", "partition": 0, "event_type": "like", "applied_at": old} for i in range(3)],
        )
    client = redis.Redis.from_url(clean.broker_url)

    def purge_after_losing_the_lock() -> None:
        with singleton(engine, clean, "purge_ledger", interval_s=3600) as run:
            client.delete(job_lock_key("purge_ledger"))  # as if it expired while this process was stalled
            purge_ledger(engine, clean, run)

    with pytest.raises(LockLost, match="lost its lock"):
        purge_after_losing_the_lock()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(ledger)).scalar_one() == 3  # nothing written
    assert [r.status for r in runs(engine, "purge_ledger")] == ["failed"]


def test_a_second_start_is_skipped_and_a_slot_runs_once(clean: Settings, engine: Engine) -> None:
    def start() -> Any:
        return singleton(engine, clean, "expire_reservations", interval_s=3600).__enter__()

    with singleton(engine, clean, "expire_reservations", interval_s=3600) as run:
        with pytest.raises(LockNotAcquired, match="another run holds the lock"):
            start()
        run.detail = "first"
    with pytest.raises(SlotAlreadyRun, match="already ran"):
        start()
    assert [(r.status, r.detail) for r in runs(engine, "expire_reservations")] == [("done", "first")]


def _hold_in_child(settings: Settings, seconds: float) -> None:
    from seqproc.models.db import make_engine

    engine = make_engine(settings.database_url)
    with singleton(engine, settings, "snapshot_lag", interval_s=3600):
        time.sleep(seconds)


def test_the_lock_is_renewed_by_a_forked_process_that_runs_the_job(clean: Settings, engine: Engine) -> None:
    settings = clean.model_copy(update={"job_lock_s": 1.0})
    client = redis.Redis.from_url(clean.broker_url)
    lock_key = job_lock_key("snapshot_lag")
    engine.dispose()  # no pooled connection crosses the fork
    child = multiprocessing.get_context("fork").Process(target=_hold_in_child, args=(settings, 3.0))
    child.start()
    try:
        wait_for(lambda: client.exists(lock_key), 10, "the child's lock")
        # For 2 s (twice the lock's life): the lock's time to live, sampled, goes back up each time the child
        # renews it (every 1/3 s); nothing else renews it.
        renewals = 0
        last = client.pttl(lock_key)
        until = time.monotonic() + 2.0
        while time.monotonic() < until:
            time.sleep(0.02)
            ttl = client.pttl(lock_key)
            if ttl > last:
                renewals += 1
            last = ttl
        assert renewals >= 2, f"the lock was renewed {renewals} time(s) in 2 s, its time to live now {last} ms"
    finally:
        child.join(15)
    assert child.exitcode == 0
    assert not client.exists(lock_key)  # released by its owner at the end
    assert [r.status for r in runs(engine, "snapshot_lag")] == ["done"]


@pytest.fixture
def three_redis(tmp_path: Path) -> Iterator[list[PrivateRedis]]:
    servers = [PrivateRedis(tmp_path / f"r{i}", persistent=False) for i in range(3)]
    for server in servers:
        server.directory.mkdir()
        server.start()
    yield servers
    for server in servers:
        server.stop()


def test_several_lock_urls_make_a_redlock_quorum(
    clean: Settings, three_redis: list[PrivateRedis], quick_retries: None
) -> None:
    # Each lock operation that meets a stopped master is refused, then tried again (quick_retries: the quorum, not
    # the pauses between the tries, is what this test is about).
    settings = clean.model_copy(update={"lock_urls": tuple(s.url(0) for s in three_redis), "job_lock_s": 10.0})
    first = make_lock(settings, "reconcile", 10)
    assert isinstance(first, RedlockJobLock)
    assert isinstance(make_lock(clean, "reconcile", 10), RedisJobLock)  # one URL (the broker): a plain lock
    assert first.acquire()
    holders = [redis.Redis(port=s.port).exists(f"redlock:{job_lock_key('reconcile')}") for s in three_redis]
    assert sum(holders) >= 2  # a majority of the masters holds it
    assert not make_lock(settings, "reconcile", 10).acquire()
    assert first.extend()
    first.release()

    three_redis[0].stop()  # one master down: a quorum (2 of 3) still grants and excludes
    second = make_lock(settings, "reconcile", 10)
    assert second.acquire()
    assert not make_lock(settings, "reconcile", 10).acquire()
    second.release()
    three_redis[1].stop()  # two down: no quorum, no lock (the job is skipped, never run unguarded)
    assert not make_lock(settings, "reconcile", 10).acquire()


def test_beat_refuses_a_memory_broker_and_a_bad_lock_url(clean: Settings) -> None:
    def beat(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "seqproc", "beat"],
            cwd=ROOT,
            env=settings_env(clean, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )

    memory = beat(SEQPROC_BROKER_URL="memory://")
    assert memory.returncode != 0
    assert "seqproc beat needs a broker shared with the workers" in memory.stderr
    bad = beat(SEQPROC_LOCK_URLS="redis://127.0.0.1:1/0,http://nope")
    assert bad.returncode != 0
    assert "SEQPROC_LOCK_URLS: must be a comma-separated list of redis:// URLs" in bad.stderr
