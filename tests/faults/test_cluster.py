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
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

import seqproc
from seqproc.domains.likes import Like
from seqproc.models.clients import redis_client
from seqproc.models.outcomes import Outcome
from seqproc.models.scripts import FETCH_AND_HOLD, FETCH_KEYS_PER_QUEUE, RESTORE_HELD
from seqproc.models.settings import Settings
from seqproc.models.transport import fetch_keys, held_keys
from seqproc.models.wire import article_key, lease_key, partition_for, queue_name, unacked_index_key, unacked_key
from tests import domains_fixture as fixture
from tests.conftest import RelayProcess, WorkerProcess
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
    group.stop()


def on_cluster(settings: Settings, group: ClusterGroup) -> Settings:
    return settings.model_copy(update={"broker_url": group.url(), "result_backend": group.url()})


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


@pytest.mark.parametrize("fault", ["primary_sigkill", "slot_migration"])
def test_cluster_direct_events_are_never_doubled_or_reordered_and_every_loss_is_counted(
    fault: str,
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    redis_cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = on_cluster(clean, redis_cluster).model_copy(
        update={"domains": ("tests.domains_fixture",), "loss_grace_s": 2}
    )
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
