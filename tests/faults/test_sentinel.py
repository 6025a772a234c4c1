"""Redis Sentinel failover mid-stream: a primary, a replica and three sentinels started by the test on its own ports
(``tests.faults.servers``), the primary killed with SIGKILL while producers, the relay and a worker run against
``sentinel://`` URLs (broker and result backend). Every process finds the new master by itself.

Outbox events: nothing lost, doubled or reordered (the relay's push counters send again what the failover lost).
Direct events: nothing doubled or reordered; a push acknowledged by the old primary that its replica had not copied
is gone (replication is asynchronous), and the FAULT line says how many. Bounded: one kill, ~30 s each.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, text

import seqproc
from seqproc.models.clients import bounded_retry, broker_client
from seqproc.models.errors import PublishError
from seqproc.models.settings import Settings
from seqproc.producer.publish import publisher_for
from seqproc.worker.engine.sequence import lost_total
from seqproc.worker.ownership.partitions import pending_messages
from tests import domains_fixture as fixture
from tests.conftest import RelayProcess, WorkerProcess, wait_for
from tests.faults.matrix import report
from tests.faults.servers import SentinelGroup, redis_at
from tests.faults.test_outbox_faults import app_engine, outbox_stream
from tests.integration.test_domain_parking import tally_tables

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

__all__ = ["app_engine", "tally_tables"]  # fixtures, used by name


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    group = SentinelGroup(tmp_path / "sentinel").start()
    yield group
    group.stop()


def on_sentinel(settings: Settings, group: SentinelGroup) -> Settings:
    return settings.model_copy(update={"broker_url": group.url(0), "result_backend": group.url(1)})


def kill_master_mid_stream(group: SentinelGroup, *, before_s: float = 2.0, after_s: float = 3.0) -> Callable[[], int]:
    """A ``disrupt`` for the streams: let it flow, wait until the replica caught up (a promotion must not find it
    mid-sync), SIGKILL the primary, wait for the sentinels to promote the replica, let it flow on the new one."""

    def disrupt() -> int:
        time.sleep(before_s)
        group.wait_caught_up()
        old = group.kill_master()
        took_s = group.wait_failover(old)
        print(f"failover: the sentinels named a new master {took_s:.1f} s after the SIGKILL")
        time.sleep(after_s)
        return 1

    return disrupt


def kill_master_with_replica_behind(
    group: SentinelGroup, *, behind_s: float = 4.0, cut: bool = False
) -> Callable[[], int]:
    """A ``disrupt``: the replica paused for ``behind_s`` (the master takes writes it never copies), then the master
    killed and the replica resumed: the sentinels promote a replica that lacks the last ``behind_s`` of pushes.

    What the master sent the paused replica may still wait in the replica's socket buffer and be read after
    SIGCONT, so the plain pause does not always lose anything. ``cut``: the master also closes its replica's link
    (``CLIENT KILL TYPE replica``, every 0.2 s of the pause): nothing written after the first cut reaches the
    replica, which the test checks (the promoted replica lacks part of the old master's stream)."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        group.signal_replica(signal.SIGSTOP)
        try:
            ends = time.monotonic() + behind_s
            while cut and time.monotonic() < ends:
                group.cut_replica_link()
                time.sleep(0.2)
            time.sleep(max(0.0, ends - time.monotonic()))
            old = group.kill_master()
        finally:
            group.signal_replica(signal.SIGCONT)
        took_s = group.wait_failover(old)
        lag_bytes = group.promoted_lag_bytes()
        print(
            f"failover with the replica {behind_s:g} s behind{' and cut off' if cut else ''}: a new master "
            f"{took_s:.1f} s after the SIGKILL, lacking {lag_bytes} bytes of the old master's writes"
        )
        if cut:
            assert lag_bytes > 0, "the fault did not land: the promoted replica had every write of the old master"
        time.sleep(3.0)
        return 1

    return disrupt


def kill_master_after_the_last_sends(
    group: SentinelGroup, stream: DirectStream, worker: WorkerProcess, settings: Settings, *, behind_s: float = 3.0
) -> Callable[[], int]:
    """A ``disrupt`` whose losses are all tails: the replica paused and cut off (as ``cut``) and the worker paused
    too, so that a backlog of ``behind_s`` of pushes sits on the master alone; then the producers stop for good,
    the master is killed and the replica promoted. No producer sends again: no later message reveals what the
    failover took, only the producer process's marks (``producer.marks``), which the sentinel waits for."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        worker.process.send_signal(signal.SIGSTOP)
        group.signal_replica(signal.SIGSTOP)
        try:
            ends = time.monotonic() + behind_s
            while time.monotonic() < ends:
                group.cut_replica_link()
                time.sleep(0.2)
            stream.halt()  # the last sends: each acknowledged by the master alone
            old = group.kill_master()
        finally:
            group.signal_replica(signal.SIGCONT)
            worker.process.send_signal(signal.SIGCONT)
        took_s = group.wait_failover(old)
        lag_bytes = group.promoted_lag_bytes()
        print(
            f"failover with the replica cut off and the worker paused for {behind_s:g} s, no send after the kill: a "
            f"new master {took_s:.1f} s after the SIGKILL, lacking {lag_bytes} bytes of the old master's writes"
        )
        assert lag_bytes > 0, "the fault did not land: the promoted replica had every write of the old master"
        keeper = publisher_for(settings).marks
        assert keeper is not None
        new_master = redis_at(group.master_port() or 0).info("replication")["master_replid"]
        wait_for(lambda: keeper.knows(new_master), 15, "the producer's marks on the new master")
        return 1

    return disrupt


def pause_master_past_failover(group: SentinelGroup) -> Callable[[], int]:
    """A ``disrupt``: the master SIGSTOPped past ``down-after-milliseconds`` (the sentinels promote the replica), then
    SIGCONT: it comes back believing it is the master, with clients still connected to it, until the sentinels
    demote it."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        old = group.signal_master(signal.SIGSTOP)
        try:
            took_s = group.wait_failover(old)
        finally:
            group.signal_master_port(old, signal.SIGCONT)
        group.wait_demoted(old)
        print(f"stale master: a new master {took_s:.1f} s after the SIGSTOP; the old one resumed, then demoted")
        time.sleep(3.0)
        return 1

    return disrupt


DISRUPTS = {
    "caught_up": kill_master_mid_stream,
    "behind": kill_master_with_replica_behind,
    "cut": lambda group: kill_master_with_replica_behind(group, cut=True),
    "stale_master": pause_master_past_failover,
}
FAULTS = {
    "caught_up": "primary SIGKILL mid-stream, replica caught up",
    "behind": "primary SIGKILL mid-stream, replica behind",
    "cut": "primary SIGKILL mid-stream, replica behind and its link cut",
    "stale_master": "primary SIGSTOP past down-after, then SIGCONT (stale master)",
    "tail": "primary SIGKILL after the producers' last sends, replica cut off and worker paused (only tails lost)",
}


#: Under ``make soak`` only: a failover with the replica caught up, or behind without its link cut, is what ``cut``
#: does with less certainty (``cut`` asserts that the promoted replica lacked writes, which the relay sends again).
SOAK_ONLY = pytest.mark.slow


@pytest.mark.parametrize(
    "replica",
    [
        pytest.param("caught_up", marks=SOAK_ONLY),
        pytest.param("behind", marks=SOAK_ONLY),
        "cut",
        "stale_master",
    ],
)
def test_sentinel_primary_sigkill_loses_no_outbox_event(
    replica: str,
    clean: Settings,
    app_engine: Engine,
    engine: Engine,
    sentinel_group: SentinelGroup,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    settings = on_sentinel(clean, sentinel_group)
    worker = start_worker(settings)
    relay = start_relay(settings)
    outbox_stream(
        settings,
        app_engine,
        engine,
        disrupt=DISRUPTS[replica](sentinel_group),
        finish=lambda: None,
        fault=f"Sentinel {FAULTS[replica]} (outbox + relay)",
        min_events=500,
    )
    # Both carried on on the new master.
    assert worker.process.poll() is None
    assert relay.process.poll() is None


@dataclass
class DirectStream:
    """Threads sending ``tally.add`` directly (no outbox), one tally each, labels numbered in sending order; a send
    that raises is sent again with the same idempotency key before the next (what a caller that must not lose it
    does). The model the applied log must match."""

    tallies: list[int]
    acknowledged: dict[int, list[int]] = field(default_factory=dict)
    errors: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, tally_id: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            label = f"{tally_id}-{n}"
            while True:
                try:
                    seqproc.send(fixture.Add(tally_id=tally_id, amount=1, label=label), idempotency_key=label)
                    break
                except PublishError:
                    with self.lock:
                        self.errors += 1
                    if self.stop.is_set():
                        return  # maybe sent, never acknowledged: not in the model either way
            with self.lock:
                self.acknowledged.setdefault(tally_id, []).append(n)
            time.sleep(0.002)

    threads: list[threading.Thread] = field(default_factory=list)

    def during(self, disrupt: Callable[[], int]) -> int:
        self.threads = [threading.Thread(target=self.run, args=(t,)) for t in self.tallies]
        for thread in self.threads:
            thread.start()
        try:
            return disrupt()
        finally:
            self.halt()

    def halt(self) -> None:
        """Stop sending, and wait until no send is under way."""
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def count(self, engine: Engine) -> tuple[int, int, int, int]:
        """(acknowledged, lost, doubled, out of order) against the applied log."""
        sent = lost = doubled = out_of_order = 0
        with engine.connect() as conn:
            for tally_id in self.tallies:
                rows = conn.execute(
                    text("SELECT label FROM fixture_tally_log WHERE tally_id = :id ORDER BY id"), {"id": tally_id}
                ).scalars()
                applied = [int(label.rsplit("-", 1)[1]) for label in rows]
                acked = self.acknowledged.get(tally_id, [])
                sent += len(acked)
                lost += len(set(acked) - set(applied))
                doubled += len(applied) - len(set(applied))
                out_of_order += sum(1 for a, b in itertools.pairwise(applied) if b <= a)
        return sent, lost, doubled, out_of_order


def drained(engine: Engine, settings: Settings, quiet_s: float = 1.0) -> Callable[[], bool]:
    """A condition: the broker (its current master) holds no message of any partition, queued or unacknowledged,
    and the applied log has not grown for ``quiet_s`` since: everything that reached the broker was applied. (A
    quiet log alone is no sign: after a failover the worker waits for the new master, then takes back what it
    held, for seconds in which nothing is applied while the queues are full.)"""
    client = broker_client(settings, timeout_s=2, connect_timeout_s=2, retry=bounded_retry(0))
    seen: list[tuple[int, float]] = []

    def check() -> bool:
        try:
            left = pending_messages(client, settings.partitions)
        except redis.RedisError:
            return False
        with engine.connect() as conn:
            rows = int(conn.execute(text("SELECT count(*) FROM fixture_tally_log")).scalar_one())
        if left or not seen or seen[-1][0] != rows:
            seen.append((rows, time.monotonic()))
            return False
        return time.monotonic() - seen[-1][1] >= quiet_s

    return check


def judged(
    stream: DirectStream, engine: Engine, injected: int, fault: str, settings: Settings
) -> tuple[int, int, int, int, int]:
    """Once every message on the broker was applied (``drained``): (sent, lost, doubled, out of order, lost as the
    workers declared), against ``stream``'s model, with the ``FAULT`` line printed."""
    wait_for(drained(engine, settings), 60, "every message on the broker applied")
    sent, lost, doubled, out_of_order = stream.count(engine)
    lost_detected = declared_lost(engine)
    report(
        fault,
        injected=injected,
        sent=sent,
        lost=lost,
        doubled=doubled,
        out_of_order=out_of_order,
        lost_detected=lost_detected,
    )
    return sent, lost, doubled, out_of_order, lost_detected


def declared_lost(engine: Engine, timeout_s: float = 20) -> int:
    """The events the workers declared lost, once no gap is left undeclared (each is declared a grace after it was
    seen, at a worker's heartbeat)."""
    with engine.connect() as conn:

        def open_gaps() -> int:
            count = conn.execute(text("SELECT count(*) FROM seqproc_sequence_gap WHERE declared_at IS NULL"))
            conn.rollback()
            return int(count.scalar_one())

        wait_for(lambda: open_gaps() == 0, timeout_s, "every sequence gap declared")
        return lost_total(conn)


@pytest.mark.parametrize(
    ("replica", "durability"),
    [
        pytest.param("caught_up", "async", marks=SOAK_ONLY),
        pytest.param("behind", "async", marks=SOAK_ONLY),
        ("cut", "async"),
        ("tail", "async"),
        ("behind", "replica"),
        ("stale_master", "async"),
    ],
)
def test_sentinel_primary_sigkill_direct_events_are_never_doubled_or_reordered_and_every_loss_is_counted(
    replica: str,
    durability: str,
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    sentinel_group: SentinelGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Direct events. ``async`` (acknowledged by the primary alone): with the replica caught up the failover loses
    nothing; with it behind, the pushes it lacked are lost, and every one is detected (a gap in its producer's
    sequence) and counted: ``lost == lost_detected``; with its link cut as well (``cut``: the promoted replica lacks
    megabytes of the old master's writes), the same; when the producers never send again after the kill (``tail``:
    every loss a tail), the producer process's marks reveal them. ``replica`` (acknowledged once a replica has
    them): nothing acknowledged is lost; a send that no replica acknowledged raised PublishError and was sent again
    with its key (the gaps such sends left are what ``lost_detected`` counts then).

    Judged once the new master holds no message, queued or unacknowledged (``drained``): a worker back from a
    failover takes seconds to take back what it held, during which a quiet log proves nothing."""
    # Gaps are declared lost 2 s after they were seen (production: past the visibility timeout).
    settings = on_sentinel(clean, sentinel_group).model_copy(
        update={"domains": ("tests.domains_fixture",), "loss_grace_s": 2, "publish_durability": durability}
    )
    worker = start_worker(settings)
    seqproc.configure(settings)
    stream = DirectStream(tallies=list(range(1, 9)))
    if replica == "tail":
        disrupt = kill_master_after_the_last_sends(sentinel_group, stream, worker, settings)
    else:
        disrupt = DISRUPTS[replica](sentinel_group)
    injected = stream.during(disrupt)
    sent, lost, doubled, out_of_order, lost_detected = judged(
        stream, engine, injected, f"Sentinel {FAULTS[replica]} (direct, {durability})", settings
    )
    assert sent > 500
    if durability == "replica":
        assert lost == 0
        assert stream.errors > 0  # ...though the fault did hold sends up (the replica was paused)
    else:
        # The fault does not always lose anything on this kernel: what the master sent the paused replica waits in
        # the replica's socket buffer and is read after SIGCONT (CI saw lost=0 in 1 run of 2). A run that lost
        # nothing proves only that nothing was doubled, reordered or counted lost; the runs that lost (26 and 69
        # events in the runs of 2026-12-06) counted every one.
        if replica == "behind" and lost == 0:
            print("the replica caught up from its socket buffer: no acknowledged push was lost this run")
        if replica == "tail":
            assert lost > 0  # the worker was paused: the master died with a backlog no replica had
        assert lost == lost_detected  # every event the failover dropped is counted, none that arrived
    assert doubled == 0
    assert out_of_order == 0
