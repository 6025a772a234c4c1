"""seqproc on a Redis Cluster (issue 20): three primaries and three replicas started by the test
(``tests.faults.cluster``), every process given ``redis+cluster://`` URLs for the broker and the result backend.

- End to end: likes sent directly over partitions spread on every primary, through the threaded producer and
  through ``seqproc.aio``, each waited on (outcomes through the cluster), applied exactly once and in order.
- A primary SIGKILLed mid-stream (its replica promoted by the cluster): direct events never doubled or reordered,
  every loss detected; outbox events, nothing lost.
- A partition's slot migrated to another primary mid-stream (``CLUSTER SETSLOT ... IMPORTING/MIGRATING`` and
  ``MIGRATE``, as ``redis-cli --cluster reshard`` does): nothing lost, doubled or reordered.

Each fault test prints its ``FAULT`` line; bounded: one fault, well under a minute each.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

import seqproc
import seqproc.aio
from seqproc.domains.likes import Like
from seqproc.models.clients import redis_client
from seqproc.models.errors import PublishError
from seqproc.models.outcomes import Outcome
from seqproc.models.scripts import FETCH_AND_HOLD, FETCH_KEYS_PER_QUEUE, RESTORE_HELD
from seqproc.models.settings import Settings
from seqproc.models.transport import fetch_keys, held_keys
from seqproc.models.wire import article_key, lease_key, partition_for, queue_name, unacked_index_key, unacked_key
from seqproc.producer.publish import publisher_for
from tests import domains_fixture as fixture
from tests.conftest import RelayProcess, WorkerProcess, wait_for
from tests.faults.cluster import ClusterGroup
from tests.faults.matrix import doubled_in_tables, report
from tests.faults.servers import redis_at
from tests.faults.test_outbox_faults import app_engine, outbox_stream
from tests.faults.test_sentinel import DirectStream, judged
from tests.integration.test_domain_parking import tally_tables
from tests.integration.test_status import by_partition, run_status, status_json

pytestmark = [pytest.mark.services, pytest.mark.timeout(120)]

__all__ = ["app_engine", "tally_tables"]  # fixtures, used by name

#: The tallies the direct streams send to (one thread each).
TALLIES = list(range(1, 9))


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[ClusterGroup]:
    group = ClusterGroup(tmp_path / "cluster").start()
    yield group
    group.stop()  # and forgets this process's publishers of it


def on_cluster(settings: Settings, group: ClusterGroup) -> Settings:
    return settings.model_copy(update={"broker_url": group.url(), "result_backend": group.url()})


def for_direct_events(settings: Settings, group: ClusterGroup, **update: object) -> Settings:
    """``settings`` on the cluster for the direct-event streams (``DirectStream``'s tallies; gaps declared lost 5 s
    after they were seen: a send retried across a promotion can arrive over 2 s after a later one of its producer,
    sent by another thread, and would then be counted lost although it came), with ``update``."""
    return on_cluster(settings, group).model_copy(
        update={"domains": ("tests.domains_fixture",), "loss_grace_s": 5, **update}
    )


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_cluster_likes_are_applied_exactly_once_in_order(
    front: str,
    clean: Settings,
    engine: Engine,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """400 likes, then an unlike of each article (after its like: the last action wins), each waited on, and a
    caller's retry: through ``seqproc.like`` and ``Receipt.wait``, or ``seqproc.aio`` (the likes as 400 concurrent
    coroutines) and ``seqproc.aio.wait_all``."""
    settings = on_cluster(clean, redis_cluster)
    nodes = {redis_cluster.primary_of_slot(redis_cluster.slot_of(queue_name(p))) for p in range(settings.partitions)}
    assert len(nodes) == 3  # the partitions live on every primary
    start_worker(settings)
    seqproc.configure(settings)
    pairs = [(article, user) for user in range(1, 41) for article in range(1, 11)]
    if front == "sync":
        receipts = [seqproc.like(article, user) for article, user in pairs]
        receipts += [seqproc.unlike(article, 1) for article in range(1, 11)]
        outcomes = [receipt.wait(timeout_s=30) for receipt in receipts]
        # Sent again with the same key (a caller's retry): a duplicate, applied once.
        again = seqproc.like(1, 2, idempotency_key=receipts[1].idempotency_key).wait(timeout_s=30)
    else:

        async def run() -> tuple[list[seqproc.Receipt], list[Outcome], Outcome]:
            receipts = list(await asyncio.gather(*(seqproc.aio.like(article, user) for article, user in pairs)))
            receipts += [await seqproc.aio.unlike(article, 1) for article in range(1, 11)]
            outcomes = await seqproc.aio.wait_all(receipts, timeout_s=30)
            retry = await seqproc.aio.like(1, 2, idempotency_key=receipts[1].idempotency_key)
            return receipts, outcomes, await seqproc.aio.wait(retry, timeout_s=30)

        receipts, outcomes, again = asyncio.run(run())
    assert {outcome.status for outcome in outcomes} == {"applied"}
    with engine.connect() as conn:
        counts = dict(conn.execute(text("SELECT article_id, like_count FROM article_like_count")).all())
        liked = conn.execute(text("SELECT count(*) FROM article_like")).scalar_one()
    assert counts == dict.fromkeys(range(1, 11), 39)
    assert liked == 390
    assert again.status == "duplicate"


def tally_slot(group: ClusterGroup, settings: Settings, tally_id: int) -> int:
    key = fixture.Add(tally_id=tally_id, amount=1, label="-").entity_key
    return group.slot_of(queue_name(partition_for(key, settings.partitions)))


def kill_primary_mid_stream(group: ClusterGroup, slot: int) -> Callable[[], int]:
    """A ``disrupt``: let it flow, wait until the replicas caught up, SIGKILL the primary holding ``slot``, wait for
    its replica's promotion, let it flow on."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        old = group.primary_of_slot(slot)
        group.kill(old)
        took_s = group.wait_promoted(old, slot)
        print(f"failover: slot {slot} served by a promoted replica {took_s:.1f} s after the SIGKILL of {old}")
        time.sleep(3.0)
        return 1

    return disrupt


def migrate_mid_stream(group: ClusterGroup, slot: int) -> Callable[[], int]:
    """A ``disrupt``: let it flow, move ``slot`` to another primary, keys and all, let it flow on."""

    def disrupt() -> int:
        time.sleep(2.0)
        source = group.primary_of_slot(slot)
        target = next(port for port in group.primaries() if port != source)
        moved = group.migrate_slot(slot, target)
        assert group.primary_of_slot(slot) == target
        print(f"migration: slot {slot} moved from {source} to {target} with {moved} key(s)")
        time.sleep(3.0)
        return 1

    return disrupt


def kill_primary_after_the_last_sends(
    group: ClusterGroup,
    slot: int,
    stream: DirectStream,
    worker: WorkerProcess,
    settings: Settings,
    *,
    behind_s: float = 3.0,
) -> Callable[[], int]:
    """A ``disrupt`` whose losses are all tails (the Sentinel ``tail`` case, on one shard): the replica of the
    primary holding ``slot`` paused and its link cut (``CLIENT KILL TYPE replica`` every 0.2 s), the worker paused
    too, so that ``behind_s`` of pushes sit on that primary alone; then the producers stop for good, the primary is
    SIGKILLed and the cluster promotes its replica. No producer sends again: only the producer process's marks
    (``producer.marks``, per shard) reveal what the failover took, which the test waits for."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        keeper = publisher_for(settings).marks
        assert keeper is not None
        old_id = redis_at(group.primary_of_slot(slot)).info("replication")["master_replid"]
        wait_for(lambda: keeper.knows(old_id), 10, "the producer's keeper to have looked at the primary")
        # The last sends (stream.halt): each acknowledged by the primary alone.
        primary, took_s, lag_bytes = group.kill_primary_past_its_replica(
            slot, behind_s=behind_s, paused=[worker.process], before_kill=stream.halt
        )
        print(
            f"failover with the replica cut off and the worker paused for {behind_s:g} s, no send after the kill: "
            f"slot {slot} served by the promoted replica {took_s:.1f} s after the SIGKILL of {primary}, lacking "
            f"{lag_bytes} bytes of the old primary's writes"
        )
        assert lag_bytes > 0, "the fault did not land: the promoted replica had every write of the old primary"
        new_id = redis_at(group.primary_of_slot(slot)).info("replication")["master_replid"]
        wait_for(lambda: keeper.knows(new_id), 15, "the producer's marks on the promoted primary")
        return 1

    return disrupt


def test_a_producers_tail_lost_in_a_primarys_failover_is_counted_by_its_marks(
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Direct events whose losses are all tails: the producers' last sends sit on one primary alone (its replica cut
    off, the worker paused), then that primary is SIGKILLed and no producer sends again. The producer process's mark
    keeper follows each primary's replication id; it finds the partitions of the killed primary on a primary it
    never saw (the promoted replica) and marks them there: the workers count every event lost (``lost ==
    lost_detected``, ``lost > 0``), judged against the events the producers had acknowledged. Nothing doubled or
    reordered."""
    settings = for_direct_events(clean, redis_cluster)
    worker = start_worker(settings)
    seqproc.configure(settings)
    slot = tally_slot(redis_cluster, settings, TALLIES[0])
    stream = DirectStream(tallies=TALLIES)
    injected = stream.during(kill_primary_after_the_last_sends(redis_cluster, slot, stream, worker, settings))
    sent, lost, doubled, out_of_order, lost_detected = judged(
        stream,
        engine,
        injected,
        "Redis Cluster primary SIGKILL after the producers' last sends, replica cut off and worker paused (only "
        "tails lost; the marks per shard)",
        settings,
    )
    assert sent > 300
    assert lost > 0  # the worker was paused: the primary died with a backlog its replica never had
    assert lost == lost_detected  # every tail counted, through the marks alone
    assert doubled == 0
    assert out_of_order == 0


def stop_primary_mid_stream(
    group: ClusterGroup, slot: int, worker: WorkerProcess, noticed: list[float]
) -> Callable[[], int]:
    """A ``disrupt``: SIGSTOP the primary holding ``slot`` (a silent node: its connections stay open, nothing
    answers), read from the worker's log when it notices (``broker unresponsive``; into ``noticed``), wait for the
    cluster to promote its replica, let it flow on the new slot map, then SIGCONT the old primary (it rejoins as a
    replica)."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        old = group.primary_of_slot(slot)
        mark = len(worker.log())
        group.signal(old, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            wait_for(lambda: "broker unresponsive" in worker.log()[mark:], 30, "the worker to notice the silent node")
            noticed.append(time.monotonic() - stopped_at)
            took_s = group.wait_promoted(old, slot)
            print(
                f"silent node: the worker noticed the SIGSTOP of {old} after {noticed[0]:.1f} s; slot {slot} served "
                f"by a promoted replica {took_s:.1f} s after it"
            )
            time.sleep(3.0)
        finally:
            group.signal(old, signal.SIGCONT)
        return 1

    return disrupt


@pytest.mark.parametrize("fault", ["primary_sigkill", "slot_migration"])
def test_cluster_direct_events_are_never_doubled_or_reordered_and_every_loss_is_counted(
    fault: str,
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = for_direct_events(clean, redis_cluster)
    start_worker(settings)
    seqproc.configure(settings)
    slot = tally_slot(redis_cluster, settings, TALLIES[0])
    disrupt = (kill_primary_mid_stream if fault == "primary_sigkill" else migrate_mid_stream)(redis_cluster, slot)
    stream = DirectStream(tallies=TALLIES)
    injected = stream.during(disrupt)
    fault_line = f"Redis Cluster {fault.replace('_', ' ')} mid-stream (direct)"
    sent, lost, doubled, out_of_order, lost_detected = judged(stream, engine, injected, fault_line, settings)
    assert sent > 300
    assert lost == lost_detected  # every event the failover dropped is counted, none that arrived
    if fault == "slot_migration":
        assert lost == 0  # a migration moves the keys whole
    assert doubled == 0
    assert out_of_order == 0


def tryagain_replies(group: ClusterGroup) -> int:
    """``TRYAGAIN`` replies the primaries gave so far (``INFO errorstats``): a script whose keys were split between
    a migrating slot's two nodes."""
    return sum(
        int(redis_at(port).info("errorstats").get("errorstat_TRYAGAIN", {}).get("count", 0))
        for port in group.primaries()
    )


@pytest.mark.parametrize("front", ["sync", "asyncio"])
def test_sends_during_a_slow_resharding_wait_for_the_slot(
    front: str,
    clean: Settings,
    engine: Engine,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A partition's slot moved a key a second (as a resharding of a busy slot, its queue, bell and pending index
    split between two primaries for seconds) while likes are sent to it, each call with a like of another article
    on another slot (one pipeline): each push that meets the slot half moved (``TRYAGAIN``) is sent again until its
    publish timeout, and none fails (redis-py's own redirections give up within ~0.5 s: "TTL exhausted", and every
    such call raised PublishError); the other push is not sent again (it was pushed again with the failed one: its
    outcome read ``duplicate``). Each like applied once, each outcome ``applied``. Through ``seqproc.send_many``
    and ``seqproc.aio.send_many``."""
    settings = on_cluster(clean, redis_cluster)
    seqproc.configure(settings)
    receipts = [seqproc.like(1, 1)]  # no worker yet: the slot holds the queue, its bell and the pending index
    slot = redis_cluster.slot_of(queue_name(partition_for(article_key(1), settings.partitions)))
    other = next(
        a
        for a in range(2, 100)
        if redis_cluster.slot_of(queue_name(partition_for(article_key(a), settings.partitions))) != slot
    )
    source = redis_cluster.primary_of_slot(slot)
    target = next(port for port in redis_cluster.primaries() if port != source)
    before = tryagain_replies(redis_cluster)
    moved: list[int] = []
    migration = threading.Thread(
        target=lambda: moved.append(redis_cluster.migrate_slot(slot, target, batch=1, pause_s=1.0))
    )
    migration.start()
    users = 1
    while migration.is_alive():
        users += 1
        pair = [Like(article_id=1, user_id=users), Like(article_id=other, user_id=users)]
        receipts += seqproc.send_many(pair) if front == "sync" else asyncio.run(seqproc.aio.send_many(pair))
        time.sleep(0.02)
    migration.join()
    tryagain = tryagain_replies(redis_cluster) - before
    assert moved[0] >= 2  # the keys were split for a second at least
    assert redis_cluster.primary_of_slot(slot) == target
    start_worker(settings)
    statuses = Counter(o.status for o in seqproc.wait_all(receipts, timeout_s=60))
    with engine.connect() as conn:
        liked = dict(conn.execute(text("SELECT article_id, count(*) FROM article_like GROUP BY article_id")).all())
        counts = dict(conn.execute(text("SELECT article_id, like_count FROM article_like_count")).all())
        doubled = doubled_in_tables(conn)
    report(
        f"Redis Cluster slot moved a key a second under sends ({moved[0]} keys, {tryagain} TRYAGAIN replies)",
        injected=1,
        sent=len(receipts),
        lost=len(receipts) - sum(liked.values()),
        doubled=doubled,
        out_of_order=0,
    )
    assert tryagain > 0  # the pushes met the slot half moved
    assert statuses == {"applied": len(receipts)}
    assert liked == counts == {1: users, other: users - 1}
    assert doubled == 0


def test_a_fetch_that_empties_a_queue_whose_slot_is_migrating_holds_what_it_returns(
    clean: Settings, redis_cluster: ClusterGroup
) -> None:
    """On a slot being migrated, every key a fetch names is on the source (so the script runs there), and the queue
    holds one message: the fetch takes it and returns it. (Popping once more after the queue emptied made the key
    "non local" on the source: the script failed after the message had moved to unacked, held and delivered to
    nobody, and the worker fetched the queue's later messages first: found by the model check, out of order.)"""
    settings = on_cluster(clean, redis_cluster)
    seqproc.configure(settings)
    receipt = seqproc.like(1, 1)  # the queue holds one message, its bell is rung
    queue = receipt.queue
    owner = "test-owner"
    client = redis_client(settings.broker_url)
    client.set(lease_key(queue), owner)
    client.hset(unacked_key(queue), "earlier", "-")
    client.zadd(unacked_index_key(queue), {"earlier": 0})
    with redis_cluster.migrating(redis_cluster.slot_of(queue)) as source:
        reply = redis_at(source).eval(
            FETCH_AND_HOLD, FETCH_KEYS_PER_QUEUE, *fetch_keys(queue), time.time(), 10, 1, owner
        )
        held = redis_at(source).hkeys(unacked_key(queue))
    assert [item.decode() for item in reply[::2]] == [queue]
    assert json.loads(reply[1])["properties"]["delivery_tag"] in {tag.decode() for tag in held}
    assert redis_at(source).llen(queue) == 0


def test_a_restore_on_a_migrating_slot_restores_what_is_held(clean: Settings, redis_cluster: ClusterGroup) -> None:
    """A restore naming a tag acked meanwhile and one still held, on a slot being migrated: the held message goes back
    in line, the hash and the index are emptied. (Deleting tag by tag, the index emptied by the first was touched
    again by the next, "non local key" on the source: the restore failed half done.)"""
    settings = on_cluster(clean, redis_cluster)
    seqproc.configure(settings)
    queue = seqproc.like(1, 1).queue  # the queue and its bell exist on the slot's primary
    client = redis_client(settings.broker_url)
    client.hset(unacked_key(queue), "held", "-")
    client.zadd(unacked_index_key(queue), {"held": 0})
    with redis_cluster.migrating(redis_cluster.slot_of(queue)) as source:
        # Oldest first: "acked" (no longer held), then "held"; pushed at the consuming end.
        pushed = redis_at(source).eval(RESTORE_HELD, 4, *held_keys(queue), "1", 2, "acked", "held", "", "message")
    node = redis_at(source)  # the slot's again, whole: its missing keys read as missing, not redirected
    left = (node.exists(unacked_key(queue)), node.exists(unacked_index_key(queue)), node.lindex(queue, -1))
    assert pushed == 1
    assert left == (0, 0, b"message")


def test_cluster_primary_sigkill_loses_no_outbox_event(
    clean: Settings,
    app_engine: Engine,
    engine: Engine,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
    start_relay: Callable[..., RelayProcess],
) -> None:
    settings = on_cluster(clean, redis_cluster)
    worker = start_worker(settings)
    relay = start_relay(settings)
    slot = redis_cluster.slot_of(queue_name(partition_for(article_key(1), settings.partitions)))
    outbox_stream(
        settings,
        app_engine,
        engine,
        disrupt=kill_primary_mid_stream(redis_cluster, slot),
        finish=lambda: None,
        fault="Redis Cluster primary SIGKILL mid-stream (outbox + relay)",
        min_events=300,
    )
    assert worker.process.poll() is None
    assert relay.process.poll() is None


def test_status_on_a_cluster_reads_every_partition_on_its_primary(
    clean: Settings, engine: Engine, redis_cluster: ClusterGroup, start_worker: Callable[..., WorkerProcess]
) -> None:
    """``seqproc status`` (and ``--json``) on ``redis+cluster://`` URLs: each partition's depth, unacknowledged count
    and oldest age read from the primary that holds its slot (partitions on every primary), then its owner and
    counters once a worker applied them."""
    settings = on_cluster(clean, redis_cluster)
    seqproc.configure(settings)
    articles = range(1, 41)
    receipts = [seqproc.like(article, user) for article in articles for user in (1, 2)]
    sent = dict.fromkeys(range(settings.partitions), 0)
    for article in articles:
        sent[partition_for(article_key(article), settings.partitions)] += 2
    queued = {p for p, n in sent.items() if n}
    assert len({redis_cluster.primary_of_slot(redis_cluster.slot_of(queue_name(p))) for p in queued}) == 3

    before = status_json(settings)
    entries = by_partition(before)
    # Each like is its own message (one call, one event): the depth is the events sent there.
    assert {p: e["depth"] for p, e in entries.items()} == sent
    assert all(e["unacked"] == 0 for e in entries.values())
    assert all((e["oldest_age_s"] is not None) == (p in queued) for p, e in entries.items())
    assert before["totals"]["depth"] == len(receipts)
    table = run_status(settings, "--interval", "0")
    assert table.returncode == 0, table.stderr
    assert "redis+cluster://" in table.stdout  # the title names the broker it read
    assert str(len(receipts)) in table.stdout

    worker = start_worker(settings)
    assert {o.status for o in seqproc.wait_all(receipts, timeout_s=60)} == {"applied"}
    after = by_partition(status_json(settings))
    for p, e in after.items():
        assert e["depth"] == 0
        assert e["owner"] is not None
        assert f"/{worker.pid}/" in e["owner"]
        assert e["applied"] - entries[p]["applied"] == sent[p]


#: The worker's socket timeout in the silent-node test (the default is 5 s: shorter, for time).
SILENT_SOCKET_TIMEOUT_S = 2.0


def test_a_silent_primary_is_noticed_within_the_socket_timeout_and_the_worker_carries_on_on_the_new_slot_map(
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A primary SIGSTOPped mid-stream (silent: its connections stay open and nothing answers, as a node gone
    half-open) while direct events flow: the worker notices within ``brpop_timeout`` (1 s) plus
    ``SEQPROC_BROKER_SOCKET_TIMEOUT_S`` (a fetch or an ack on that node without a reply, or a wait on a bell there
    overdue), reconnects (Celery's reconnect: a new slot map) and applies on the promoted replica; nothing doubled
    or reordered, every loss counted (judged against the events the producers had acknowledged)."""
    settings = for_direct_events(clean, redis_cluster, broker_socket_timeout_s=SILENT_SOCKET_TIMEOUT_S)
    worker = start_worker(settings)
    seqproc.configure(settings.model_copy(update={"broker_socket_timeout_s": 5}))
    slot = tally_slot(redis_cluster, settings, TALLIES[0])
    stream = DirectStream(tallies=TALLIES)
    noticed: list[float] = []
    mark = len(worker.log())
    injected = stream.during(stop_primary_mid_stream(redis_cluster, slot, worker, noticed))
    sent, lost, doubled, out_of_order, lost_detected = judged(
        stream,
        engine,
        injected,
        f"Redis Cluster primary SIGSTOP mid-stream, a silent node (worker socket timeout {SILENT_SOCKET_TIMEOUT_S:g} "
        f"s; noticed in {noticed[0]:.1f} s)",
        settings,
    )
    assert noticed[0] < 1.0 + SILENT_SOCKET_TIMEOUT_S + 1.5  # the bound, with a loaded machine's slack
    assert "Connection to broker lost" in worker.log()[mark:]  # Celery's reconnect, not a process restart
    assert worker.process.poll() is None
    assert sent > 300
    assert lost == lost_detected
    assert doubled == 0
    assert out_of_order == 0


def article_on(group: ClusterGroup, settings: Settings, primary: int, *, other: bool = False) -> int:
    """An article whose partition's slot the primary on ``primary`` serves (``other``: one it does not)."""
    for article in range(1, 1000):
        slot = group.slot_of(queue_name(partition_for(article_key(article), settings.partitions)))
        if (group.primary_of_slot(slot) == primary) != other:
            return article
    raise AssertionError(f"no article's partition on {'another primary than ' if other else ''}{primary}")


def replica_llen(port: int, queue: str) -> int:
    """The length of ``queue`` as the replica on ``port`` holds it (``READONLY``: a cluster replica reads)."""
    client = redis_at(port)
    client.execute_command("READONLY")
    return int(client.llen(queue))


#: The publish timeout of the durability tests: a send with no replica's acknowledgement raises after it.
DURABLE_TIMEOUT_S = 1.0


def test_replica_durability_on_a_cluster_waits_for_the_replica_of_the_primary_that_took_each_push(
    clean: Settings, redis_cluster: ClusterGroup
) -> None:
    """``SEQPROC_PUBLISH_DURABILITY=replica`` on a cluster: a call returns once the replica of the primary that took
    the push holds it (``WAIT 1`` on that primary's connection); with that replica paused, a call to one of its
    partitions raises ``PublishError`` (``maybe_sent``, with the receipt) within the publish timeout, sync and
    asyncio, while calls to the other primaries' partitions return as before."""
    settings = on_cluster(clean, redis_cluster).model_copy(
        update={"publish_durability": "replica", "publish_timeout_s": DURABLE_TIMEOUT_S}
    )
    seqproc.configure(settings)
    primary = redis_cluster.primaries()[0]
    replica = redis_cluster.replica_of(primary)
    assert replica is not None
    article, elsewhere = (
        article_on(redis_cluster, settings, primary),
        article_on(redis_cluster, settings, primary, other=True),
    )
    first = seqproc.like(article, 1)
    assert replica_llen(replica, first.queue) == 1  # returned only once the replica held it
    both = seqproc.send_many(
        [{"type": "like", "article_id": article, "user_id": 5}, {"type": "like", "article_id": elsewhere, "user_id": 5}]
    )
    assert replica_llen(replica, first.queue) == 2  # one call, two primaries: each waited on its own replica
    redis_cluster.signal(replica, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            seqproc.like(article, 2)
        took_s = time.monotonic() - started
        aio_started = time.monotonic()
        with pytest.raises(PublishError) as caught_aio:
            asyncio.run(seqproc.aio.like(article, 3))
        aio_took_s = time.monotonic() - aio_started
        unaffected = seqproc.like(elsewhere, 2)  # another primary, its replica running: returns
    finally:
        redis_cluster.signal(replica, signal.SIGCONT)
    for error, seconds in ((caught.value, took_s), (caught_aio.value, aio_took_s)):
        assert seconds < DURABLE_TIMEOUT_S + 1.0  # within the publish timeout: never hangs
        assert error.maybe_sent
        assert "SEQPROC_PUBLISH_DURABILITY=replica" in str(error)
        assert error.receipt is not None
        assert error.receipt.partition == first.partition
    assert unaffected.partition == both[1].partition
    assert int(redis_at(primary).llen(first.queue)) == 4  # they reached the primary all the same


def kill_primary_with_replica_behind(group: ClusterGroup, slot: int, *, behind_s: float = 3.0) -> Callable[[], int]:
    """A ``disrupt``: the replica of the primary holding ``slot`` paused and its link cut (every 0.2 s) for
    ``behind_s``, then the primary SIGKILLed and the replica resumed: the cluster promotes a replica that lacks the
    primary's last writes (checked)."""

    def disrupt() -> int:
        time.sleep(2.0)
        group.wait_caught_up()
        primary, took_s, lag_bytes = group.kill_primary_past_its_replica(slot, behind_s=behind_s)
        print(
            f"failover with the replica {behind_s:g} s behind and cut off: slot {slot} served by the promoted replica "
            f"{took_s:.1f} s after the SIGKILL of {primary}, lacking {lag_bytes} bytes of the old primary's writes"
        )
        assert lag_bytes > 0, "the fault did not land: the promoted replica had every write of the old primary"
        time.sleep(3.0)
        return 1

    return disrupt


def test_replica_durability_on_a_cluster_loses_nothing_acknowledged_in_a_primarys_failover(
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """Direct events with ``replica`` durability while a primary's replica falls behind (paused, its link cut) and
    the primary is SIGKILLed: the promoted replica lacks the old primary's last writes, but none that a call
    returned for: ``lost == 0`` against the events the producers had acknowledged (sends to that primary raised
    ``PublishError`` meanwhile and were sent again with their keys until one returned). Nothing doubled or
    reordered."""
    settings = for_direct_events(clean, redis_cluster, publish_durability="replica")
    start_worker(settings)
    seqproc.configure(settings)
    slot = tally_slot(redis_cluster, settings, TALLIES[0])
    stream = DirectStream(tallies=TALLIES)
    injected = stream.during(kill_primary_with_replica_behind(redis_cluster, slot))
    sent, lost, doubled, out_of_order, _detected = judged(
        stream,
        engine,
        injected,
        "Redis Cluster primary SIGKILL mid-stream, replica behind and its link cut (direct, replica durability)",
        settings,
    )
    assert sent > 300
    assert stream.errors > 0  # the fault held sends up: no replica acknowledged them
    assert lost == 0
    assert doubled == 0
    assert out_of_order == 0
