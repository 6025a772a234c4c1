"""The operator's side of seqproc on a Redis Cluster (issue 20): ``--partitions auto`` leases, beat's singleton locks,
the worker's metrics, and Flower (Celery's events, ``inspect``, queue lengths), each against ``redis+cluster://``
URLs. One cluster for the module (three primaries, three replicas: ``tests.faults.cluster``), emptied between tests;
the tests that SIGKILL a primary start the killed node again, so the next test gets a whole cluster.

- Two auto workers share the 16 partitions through leases held on the cluster (each in its queue's slot); one
  SIGKILLed mid-stream, the other takes its partitions over: per-product sequences stay in order, each unit restocked
  is received once (the model: what the test sent).
- The worker's Prometheus gauges and counters per partition, read from queues on every primary, against the likes
  sent per partition (routing computed by the test).
- Flower: the worker heard (events over the cluster's pub/sub), its tasks listed with the events each applied,
  ``inspect`` (the pidbox on the cluster) with its queues and stats, and the queue lengths of every partition.
- Two beats, each job run once per slot and never overlapping itself, through a SIGKILL of the primary that holds the
  lock's slot while a run holds the lock (replicated first): the lock moves with the slot to the promoted replica.
"""

from __future__ import annotations

import ast
import itertools
import re
import socket
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
import redis
from sqlalchemy import Engine, func, select

import seqproc
from seqproc import producer
from seqproc.models.clients import cluster_client
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import article_key, job_lock_key, lease_key, partition_for, queue_name
from tests.conftest import WorkerProcess, free_port, wait_for
from tests.faults.cluster import ClusterGroup
from tests.faults.matrix import doubled_in_tables, report, units_doubled
from tests.faults.servers import redis_at
from tests.faults.test_beat import BeatProcess, intervals, runs, start_beat
from tests.faults.test_failover import Sequences, owners
from tests.integration.test_flower import APPLY_TASK, PASSWORD, USER, FlowerProcess, api, http_get, start_flower
from tests.integration.test_metrics import scrape, value

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

__all__ = ["start_beat", "start_flower"]  # fixtures, used by name

#: Short leases: a SIGKILLed worker's partitions are taken over within seconds.
LEASE_S = 3.0
#: The module's cluster: ports SEQPROC_TEST_PORT_BASE + this (six), when that is set.
PORT_OFFSET = 40


@pytest.fixture(scope="module")
def ops_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    group = ClusterGroup(tmp_path_factory.mktemp("ops-cluster"), port_offset=PORT_OFFSET).start()
    yield group
    group.stop()


@pytest.fixture
def cluster(ops_cluster: ClusterGroup, clean: Settings) -> Iterator[Settings]:
    """``clean``'s settings on the module's cluster, emptied first; the producer pointed at it."""
    ops_cluster.flush()
    settings = clean.model_copy(update={"broker_url": ops_cluster.url(), "result_backend": ops_cluster.url()})
    seqproc.configure(settings)
    yield settings
    seqproc.configure(None)


def primaries_of(group: ClusterGroup, partitions: set[int]) -> set[int]:
    return {group.primary_of_slot(group.slot_of(queue_name(p))) for p in partitions}


def test_auto_workers_share_leases_on_a_cluster_and_a_killed_ones_partitions_are_taken_over(
    cluster: Settings, ops_cluster: ClusterGroup, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    settings = cluster.model_copy(update={"lease_s": LEASE_S})
    a = start_worker(settings, "auto")
    b = start_worker(settings, "auto")
    pids = {a.pid: "a", b.pid: "b"}
    wait_for(lambda: owners(engine, pids) == {"a": 8, "b": 8}, 30, "an 8/8 split")
    client = cluster_client(settings.broker_url, timeout_s=5, connect_timeout_s=5)

    def lease_holders() -> Counter[str]:
        tokens = [client.get(lease_key(queue_name(p))) for p in range(settings.partitions)]
        return Counter(name for t in tokens for pid, name in pids.items() if t and f"/{pid}/".encode() in t)

    # The leases are keys on the cluster, each in its partition's slot: on every primary.
    assert lease_holders() == {"a": 8, "b": 8}
    with engine.connect() as conn:
        b_partitions = {
            int(p) for p, o in conn.execute(select(Partition.partition, Partition.owner)) if f"/{b.pid}/" in o
        }
    assert len(primaries_of(ops_cluster, set(range(settings.partitions)))) == 3

    traffic = Sequences(list(range(300, 340)))  # 40 products over the 16 partitions: both workers hold some
    with traffic:
        time.sleep(1.5)
        b.kill()  # SIGKILL mid-stream: its leases expire, its unacknowledged messages are in its queues' hashes
        killed_at = time.monotonic()
        wait_for(lambda: owners(engine, pids)["a"] == 16, 30, "the live worker to take the killed one's partitions")
        took_s = time.monotonic() - killed_at
        time.sleep(1.5)
    print(f"takeover: {len(b_partitions)} partitions taken {took_s:.1f} s after the SIGKILL (lease {LEASE_S} s)")
    assert lease_holders() == {"a": 16}

    outcomes = producer.wait_all(traffic.receipts, timeout_s=60)
    with engine.connect() as conn:
        applied_keys = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() - len(traffic.products)
        received = traffic.received(conn)
        doubled = units_doubled(received, traffic.restocks) + doubled_in_tables(conn)
    report(
        "auto worker SIGKILLed mid-stream, its leases taken over (Redis Cluster)",
        injected=1,
        sent=len(outcomes),
        lost=max(0, len(outcomes) - applied_keys) + max(0, traffic.restocks - received),
        doubled=doubled,
        out_of_order=sum(1 for o in outcomes if o.effective.reason in ("cancelled", "insufficient_stock")),
    )
    assert len(outcomes) > 300
    traffic.check(engine)  # every step applied, in order; each unit restocked received once
    assert a.process.poll() is None


DELAY_S = 3.0


def test_metrics_on_a_cluster_count_every_partition_on_every_primary(
    cluster: Settings, ops_cluster: ClusterGroup, start_worker: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    worker = start_worker(cluster, "0-15", SEQPROC_METRICS_PORT=str(port), SEQPROC_FAULT_APPLY_DELAY_S=str(DELAY_S))
    before = scrape(port)
    assert all(value(before, "seqproc_partition_epoch", partition=str(p)) >= 1 for p in range(16))

    first_article = 1
    first_partition = partition_for(article_key(first_article), cluster.partitions)
    first = seqproc.like(first_article, 1)
    # The worker now sleeps before its first commit: what comes next waits in its queues.
    wait_for(lambda: "flush sleeping" in worker.log(), 20, "the worker's first (delayed) flush")
    articles = [a for a in range(2, 200) if partition_for(article_key(a), cluster.partitions) != first_partition][:40]
    receipts = [seqproc.like(article, user) for article in articles for user in (1, 2)]
    sent = Counter(partition_for(article_key(a), cluster.partitions) for a in articles for _ in (1, 2))
    assert len(primaries_of(ops_cluster, set(sent))) == 3  # queues on every primary

    during = scrape(port)  # served while the worker's main thread sleeps
    for p in range(cluster.partitions):
        assert value(during, "seqproc_queue_depth", partition=str(p)) == sent.get(p, 0), p
        age = value(during, "seqproc_oldest_event_age_seconds", partition=str(p))
        assert (age > 0) == (p in sent), (p, age)

    assert {o.status for o in seqproc.wait_all([first, *receipts], timeout_s=60)} == {"applied"}
    expected = sent + Counter({first_partition: 1})
    after = wait_for(
        lambda: (
            (s := scrape(port))
            and value(s, "seqproc_events_applied_total", partition=str(first_partition), type="like")
            == expected[first_partition]
            and s
        ),
        20,
        "the counters of the last flush",
    )
    for p in range(cluster.partitions):
        assert value(after, "seqproc_events_applied_total", partition=str(p), type="like") == expected.get(p, 0), p
        assert value(after, "seqproc_queue_depth", partition=str(p)) == 0
        assert value(after, "seqproc_oldest_event_age_seconds", partition=str(p)) == 0
    assert value(after, "seqproc_batch_size_events_sum") == sum(expected.values())


def numpat(group: ClusterGroup) -> int:
    """Pattern subscriptions on every live node (kombu's fanout: Celery's events, the pidbox)."""
    return sum(int(redis_at(port).execute_command("PUBSUB NUMPAT")) for port in group.live_ports())


def queue_lengths(flower: FlowerProcess) -> dict[str, int]:
    """Flower's ``/api/queues/length`` of the partition queues; every other queue it lists (the idle and the jobs
    queue) must be empty."""
    lengths = {q["name"]: q["messages"] for q in api(flower, "/api/queues/length")["active_queues"]}
    partition_queues = {name: n for name, n in lengths.items() if re.fullmatch(r"seqproc\.p\d+", name)}
    assert all(n == 0 for name, n in lengths.items() if name not in partition_queues), lengths
    return partition_queues


def test_flower_on_a_cluster_shows_workers_tasks_inspect_and_queue_lengths(
    cluster: Settings,
    ops_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
    start_flower: Callable[..., FlowerProcess],
) -> None:
    settings = cluster.model_copy(update={"task_events": True})
    flower = start_flower(settings, SEQPROC_FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}")
    flower.wait_answering("/healthcheck")
    # Flower's event receiver subscribed (nothing else runs yet): no task event sent from now on is missed.
    wait_for(lambda: numpat(ops_cluster) >= 1, 20, "Flower subscribed to Celery's events on the cluster")

    articles = range(1, 41)
    receipts = [seqproc.like(article, user) for article in articles for user in (1, 2)]  # no worker yet: they wait
    sent = Counter(partition_for(article_key(a), settings.partitions) for a in articles for _ in (1, 2))
    assert len(primaries_of(ops_cluster, set(sent))) == 3
    assert queue_lengths(flower) == {queue_name(p): sent.get(p, 0) for p in range(settings.partitions)}
    status, page = http_get(f"http://127.0.0.1:{flower.port}/broker", (USER, PASSWORD))
    assert status == 200
    assert all(queue_name(p).encode() in page for p in sent)

    worker = start_worker(settings)
    node = f"seqproc-p0-15-{worker.pid}@{socket.gethostname()}"
    assert {o.status for o in seqproc.wait_all(receipts, timeout_s=60)} == {"applied"}
    wait_for(lambda: api(flower, "/api/workers?status=true").get(node) is True, 30, "Flower hearing the worker")

    def applied_by_partition() -> Counter[int]:
        tasks = [t for t in api(flower, "/api/tasks").values() if t.get("name") == APPLY_TASK]
        done = Counter[int]()
        for t in tasks:
            if t.get("state") == "SUCCESS" and t.get("worker") == node:
                done[ast.literal_eval(t["kwargs"])["partition"]] += ast.literal_eval(t["result"]).get("applied", 0)
        return done

    # Every task's events, as the worker reported them, per partition: what was sent there.
    wait_for(lambda: applied_by_partition() == sent, 30, f"Flower's {APPLY_TASK} tasks adding up to the likes sent")

    # The remote-control view (inspect over the cluster's pidbox): the 16 queues, and the worker's stats.
    workers = wait_for(lambda: api(flower, "/api/workers?refresh=1").get(node), 30, "the worker in inspect")
    assert {q["name"] for q in workers["active_queues"]} == {queue_name(p) for p in range(16)}
    assert workers["stats"]["pid"] == worker.pid
    assert queue_lengths(flower) == {queue_name(p): 0 for p in range(settings.partitions)}
    assert "Control command error" not in worker.log()
    assert "Connection to broker lost" not in worker.log()
    assert flower.stop() == 0


def test_a_closing_channel_deletes_its_pidbox_binding_on_the_cluster(
    cluster: Settings, ops_cluster: ClusterGroup
) -> None:
    """A worker's pidbox queue (``inspect``, ``ping``) is an auto-deleted fanout binding in kombu's binding table, a
    key in its own slot. kombu deletes it when the channel closes, with its plain client (one seed node): on a cluster
    that was ``MOVED`` when another primary holds the table, and Celery's pidbox reset (after any failed control
    command) stopped the worker's consumer. The cluster channel deletes it through the cluster client."""
    from seqproc.worker.app import configure

    app = configure(cluster)
    mailbox = app.control.mailbox
    table = f"_kombu.binding.{mailbox.exchange.name}"
    client = cluster_client(cluster.broker_url, timeout_s=5, connect_timeout_s=5)
    with app.connection_for_read() as conn:
        node = mailbox.Node("probe@cluster-test")
        node.channel = conn.channel()
        seed = node.channel.client.connection_pool.connection_kwargs["port"]
        # The table lives on another primary than the seed node kombu's plain client talks to.
        assert ops_cluster.primary_of_slot(ops_cluster.slot_of(table)) != seed
        node.listen(callback=lambda body, message: None)
        bound = [m for m in client.smembers(table) if b"probe@cluster-test" in m]
        assert len(bound) == 1
        node.channel.close()
        assert not [m for m in client.smembers(table) if b"probe@cluster-test" in m]


def test_two_beats_on_a_cluster_run_each_slot_once_through_a_failover_of_the_locks_primary(
    cluster: Settings, ops_cluster: ClusterGroup, engine: Engine, start_beat: Callable[..., BeatProcess]
) -> None:
    """Each run takes 2.5 s; the job fires every 1 s from two beats; the lock lasts 3 s, renewed every second. While
    a run holds the lock (replicated to the replica first), the primary that holds the lock's slot is SIGKILLed: its
    replica, promoted, holds the lock, so no other run starts meanwhile; later runs take the lock on the new primary.
    Judged from the runs' rows: no two runs that wrote ever overlapped, no slot ran twice, runs went on after."""
    env = intervals(reconcile="1") | {"SEQPROC_JOB_LOCK_S": "3", "SEQPROC_FAULT_JOB_DELAY_S": "2.5"}
    beats = [start_beat(cluster, "a", **env), start_beat(cluster, "b", **env)]
    lock = job_lock_key("reconcile")
    slot = ops_cluster.slot_of(lock)
    wait_for(lambda: len([r for r in runs(engine, "reconcile") if r.status == "done"]) >= 2, 60, "2 runs done")

    ops_cluster.wait_caught_up()
    old = ops_cluster.primary_of_slot(slot)
    replica = ops_cluster.replica_of(old)
    assert replica is not None
    on_replica = redis.Redis(host="127.0.0.1", port=replica, socket_timeout=1, socket_connect_timeout=1)
    on_replica.execute_command("READONLY")

    def held_and_replicated() -> bool:
        running = [r for r in runs(engine, "reconcile") if r.status == "running"]
        return bool(running) and bool(on_replica.exists(lock))

    wait_for(held_and_replicated, 30, "a run holding the lock, the lock on the replica")
    holder = next(r for r in runs(engine, "reconcile") if r.status == "running")
    ops_cluster.kill(old)
    killed_at = datetime.now(UTC)
    took_s = ops_cluster.wait_promoted(old, slot)
    new = ops_cluster.primary_of_slot(slot)
    print(f"failover: the lock's slot {slot} served by {new} {took_s:.1f} s after the SIGKILL of {old}")
    after_kill = wait_for(
        lambda: (
            [r for r in runs(engine, "reconcile") if r.status == "done" and r.started_at > killed_at][:2]
            if len([r for r in runs(engine, "reconcile") if r.status == "done" and r.started_at > killed_at]) >= 2
            else None
        ),
        60,
        "2 runs done after the failover",
    )
    wait_for(lambda: redis_at(new).exists(lock), 10, "a run holding the lock on the promoted primary")
    for beat in beats:
        beat.stop()
    ops_cluster.restart(old)

    rows = runs(engine, "reconcile")
    finished = [r for r in rows if r.finished_at is not None]
    spans = sorted((r.started_at, r.finished_at) for r in finished if r.status == "done")
    overlapped = sum(1 for (_, end), (start, _) in itertools.pairwise(spans) if start < end)
    logs = "".join(beat.log() for beat in beats)
    skipped = len(re.findall(r"job reconcile: (another run holds the lock|slot \S+ already ran); skipped", logs))
    report(
        "beat lock's primary SIGKILLed while a run holds it (Redis Cluster)",
        injected=1,
        sent=len(spans),
        lost=0,
        doubled=overlapped + len(rows) - len({r.slot for r in rows}),
        out_of_order=0,
    )
    assert overlapped == 0, f"runs overlapped: {spans}"
    assert len({r.slot for r in rows}) == len(rows)
    assert skipped >= 1  # the other beat's fires were turned away while a run held the lock
    # The run that held the lock at the kill either finished (it kept renewing on the promoted primary) or stopped
    # before its write saying it lost its lock; every run not done said so.
    lost = {datetime.fromisoformat(s) for s in re.findall(r"job reconcile \(slot (\S+)\): lost its lock", logs)}
    failed = [r for r in finished if r.status != "done"]
    assert {r.status for r in failed} <= {"failed", "abandoned"}
    assert {r.slot for r in failed} <= lost, f"runs not done that never said they lost their lock: {failed}"
    assert holder.slot in {r.slot for r in finished}
    assert len(after_kill) == 2
