"""The fence on PostgreSQL: a transaction carrying an epoch that a claim has raised since is refused
(``PartitionFenced``) and commits nothing; a worker paused (SIGSTOP) with a batch in hand, woken after a takeover, is
refused its commit (read from the ledger and the queues, not from its log); two static workers started on the same
partitions end with every event applied once, in order."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import Engine, func, select

from seqproc import producer
from seqproc.models.errors import PartitionFenced
from seqproc.models.events import parse_event
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.engine.apply import PartitionBatch, apply_partitions
from seqproc.worker.ops.inspect import article_state, check_invariants
from seqproc.worker.ownership.liveness import beat, release
from seqproc.worker.ownership.partitions import claim
from tests.conftest import WorkerProcess, wait_for
from tests.faults.landing import unacked_count
from tests.faults.matrix import doubled_in_tables, report, units_doubled
from tests.faults.test_failover import Sequences, epochs
from tests.faults.test_ownership import Likes, held_by

pytestmark = pytest.mark.services

#: Who takes the partitions over in the tests below: a claim made by the test itself, with a heartbeat far ahead,
#: so that the worker taken over sees a live owner and waits (it does not resume the partition on its own).
TAKER = "seqproc-test-taker@test-host/1/fence"


def like(article: int, user: int, n: int):  # type: ignore[no-untyped-def]
    return parse_event(
        {"type": "like", "key": f"k{n}", "id": f"e{n}", "stamp": 1000 + n, "article_id": article, "user_id": user}
    )


def ledger_rows(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one())


def applied_counters(engine: Engine) -> dict[int, int]:
    """partition -> the ``applied`` counter its fence statement keeps."""
    with engine.connect() as conn:
        return {int(p): int(n) for p, n in conn.execute(select(Partition.partition, Partition.applied))}


def test_a_stale_epoch_is_refused_on_postgresql_and_nothing_is_committed(clean: Settings, engine: Engine) -> None:
    a = 1
    pa = partition_for(article_key(a), clean.partitions)
    b = next(x for x in range(2, 100) if partition_for(article_key(x), clean.partitions) != pa)
    pb = partition_for(article_key(b), clean.partitions)
    first = claim(engine, [pa, pb], owner="seqproc-test-old@h/1/a", total=clean.partitions)
    raised = claim(engine, [pb], owner="seqproc-test-new@h/2/b", total=clean.partitions)  # epoch + 1 for pb
    assert raised[pb] == first[pb] + 1
    counters = applied_counters(engine)

    # One partition's epoch is stale: the whole transaction is refused, the other partition's events with it.
    with pytest.raises(PartitionFenced) as caught, engine.begin() as conn:
        apply_partitions(
            conn,
            [
                PartitionBatch(pa, [like(a, 1, 1)], epoch=first[pa]),
                PartitionBatch(pb, [like(b, 1, 2), like(b, 2, 3)], epoch=first[pb]),
            ],
        )
    assert caught.value.partitions == [pb]
    with pytest.raises(PartitionFenced), engine.begin() as conn:  # alone, too
        apply_partitions(conn, [PartitionBatch(pb, [like(b, 3, 4)], epoch=first[pb])])
    assert ledger_rows(engine) == 0
    assert applied_counters(engine) == counters
    with engine.connect() as conn:
        assert (article_state(conn, a)["like_count"], article_state(conn, b)["like_count"]) == (0, 0)

    # The current epoch commits (the refusal above is the epoch's doing, not the batch's).
    with engine.begin() as conn:
        apply_partitions(conn, [PartitionBatch(pb, [like(b, 1, 2)], epoch=raised[pb])])
    assert ledger_rows(engine) == 1
    assert applied_counters(engine)[pb] == counters[pb] + 1


def test_a_worker_paused_mid_batch_is_refused_its_commit_after_a_takeover(
    clean: Settings, start_worker: Callable[..., WorkerProcess], engine: Engine
) -> None:
    """The worker holds a batch (fetched, in ``unacked``, its flush delayed), is paused with SIGSTOP, its partition
    is claimed by another owner, and it is woken: its transaction carries the old epoch. The ledger stays empty and
    the message is back in its queue (given back, not acked); the event is applied once, later, by the owner that
    resumes the partition, and reported ``applied`` (had the paused worker committed, it would be ``duplicate``)."""
    article = 3
    partition = partition_for(article_key(article), clean.partitions)
    worker = start_worker(clean, str(partition), SEQPROC_FAULT_APPLY_DELAY_S="2")
    broker = redis.Redis.from_url(clean.broker_url)
    epoch_before = epochs(engine)[partition]
    counters = applied_counters(engine)
    receipt = producer.like(article, 1)
    wait_for(lambda: unacked_count(broker) == 1, 15, "the worker to take the message (in unacked)")
    worker.signal(signal.SIGSTOP)  # mid-batch: the message fetched, its transaction not begun
    try:
        taken = claim(engine, [partition], owner=TAKER, total=clean.partitions)[partition]
        with engine.begin() as conn:
            beat(conn, TAKER, partitions=str(partition), liveness_s=600)
        assert taken == epoch_before + 1
    finally:
        worker.signal(signal.SIGCONT)
    # Awake, it runs its transaction with the old epoch; the message leaves unacked whatever happens to it.
    wait_for(lambda: unacked_count(broker) == 0, 20, "the woken worker to finish with its batch")
    time.sleep(0.5)
    assert ledger_rows(engine) == 0, "the worker taken over committed its batch"
    assert applied_counters(engine) == counters
    with engine.connect() as conn:
        assert article_state(conn, article)["like_count"] == 0
    assert broker.llen(queue_name(partition)) == 1  # given back to its queue for the owner, not acked
    assert worker.process.poll() is None
    assert epochs(engine)[partition] == taken

    release(engine, TAKER)  # the taker lets go: the configured worker resumes the partition, fenced anew
    outcome = receipt.wait(30)
    assert (outcome.status, outcome.reason) == ("applied", None)
    assert ledger_rows(engine) == 1
    assert epochs(engine)[partition] == taken + 1
    with engine.connect() as conn:
        assert article_state(conn, article)["like_count"] == 1


def test_two_static_workers_started_on_the_same_partitions_apply_every_event_once_in_order(
    clean: Settings, start_worker: Callable[..., WorkerProcess], engine: Engine
) -> None:
    """The README: a worker started for partitions another one holds takes them over and hands their
    unacknowledged messages back. Both stay up, events flowing all along."""
    settings = clean.model_copy(update={"lease_s": 6.0})
    first = start_worker(settings, "0-15")
    every = range(clean.partitions)
    stock = Sequences(list(range(900, 932)))
    likes = Likes(list(range(1, 21)))
    with stock, likes:
        time.sleep(1.0)
        second = start_worker(settings, "0-15")
        wait_for(lambda: held_by(engine, second, every), 20, "the second worker to hold 0-15")
        time.sleep(1.5)  # events flow through the second worker
    mismatched = likes.mismatches(engine)
    outcomes = producer.wait_all(stock.receipts, timeout_s=60)
    out_of_order = sum(1 for o in outcomes if o.effective.reason in ("cancelled", "insufficient_stock"))
    with engine.connect() as conn:
        received = stock.received(conn)
        doubled = units_doubled(received, stock.restocks) + doubled_in_tables(conn)
    report(
        "two static workers started on the same partitions",
        injected=1,
        sent=len(likes.receipts) + len(stock.receipts),
        lost=max(0, stock.restocks - received) + mismatched,
        doubled=doubled,
        out_of_order=out_of_order,
    )
    assert ledger_rows(engine) == len(likes.receipts) + len(stock.receipts) + len(stock.products)
    assert mismatched == 0
    stock.check(engine)
    assert first.process.poll() is None
    assert second.process.poll() is None
    with engine.connect() as conn:
        assert check_invariants(conn).ok
