"""Workers killed with SIGKILL again and again while producers keep sending: nothing lost, nothing doubled, the
last action per user wins. Bounded: 20 kills, a few seconds each."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
import redis
from sqlalchemy import Engine, func, select

from seqproc import producer
from seqproc.models.errors import OutcomeTimeout
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.models.tables.likes import ArticleLike
from seqproc.models.wire import article_key, partition_for, queue_name
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import WorkerProcess, wait_for
from tests.faults.landing import queued_event_ids, unacked_count, unacked_event_ids
from tests.faults.matrix import doubled_in_tables, report, units_doubled

pytestmark = pytest.mark.services

KILLS = 20


@pytest.mark.parametrize(
    "kills",
    [
        # Time for the kills (a worker start each, slower on a loaded machine) and for the drain after them.
        pytest.param(KILLS, id="20-kills", marks=pytest.mark.timeout(600)),
        pytest.param(60, id="60-kills", marks=[pytest.mark.slow, pytest.mark.timeout(900)]),
    ],
)
def test_sigkills_lose_and_double_nothing(clean: Settings, start_worker, engine: Engine, kills: int) -> None:
    sigkills_mid_stream(clean, start_worker, engine, kills=kills)


def sigkills_mid_stream(
    settings: Settings,
    start_worker: Callable[..., WorkerProcess],
    engine: Engine,
    *,
    kills: int,
    fault: str = "worker SIGKILL mid-stream",
    min_events: int = 2000,
    min_sequenced: int = 200,
) -> None:
    """Producers send on ``settings`` (their broker and result backend) while workers are started and SIGKILLed
    ``kills`` times; then one worker finishes. Reports a ``FAULT`` line named ``fault`` and asserts that every event
    was applied once, in order. Also run on a TLS broker (``test_tls``)."""
    producer.configure(settings)
    stop = threading.Event()
    receipts: list[producer.Receipt] = []
    model: dict[tuple[int, int], bool] = {}
    restocks = [0]
    lock = threading.Lock()

    def send(thread: int) -> None:
        rng = random.Random(thread)
        users = [thread * 1000 + u for u in range(1, 40)]
        while not stop.is_set():
            article, user = rng.randint(1, 10), rng.choice(users)
            if rng.random() < 0.2:
                sent = producer.restock(500 + thread, 1)
                with lock:
                    receipts.append(sent)
                    restocks[0] += 1
            else:
                action = producer.like if rng.random() < 0.6 else producer.unlike
                sent = action(article, user)
                with lock:
                    receipts.append(sent)
                    model[(article, user)] = action is producer.like  # this thread is the only one for this user
            time.sleep(0.002)

    # Per product, one unit: reserve it, release it, reserve again... Each step is applied only if the one before it
    # was: a reordering by the kills and redeliveries shows as a rejection.
    products = list(range(700, 708))
    stocked = [producer.restock(product, 1) for product in products]  # applied first: same queues, sent first
    sequenced: list[producer.Receipt] = []

    def sequence(chunk: list[int]) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            for product in chunk:
                reserved = producer.reserve(product, 1, reservation_id=f"{product}-{n}")
                released = producer.release(product, f"{product}-{n}")
                with lock:
                    sequenced.extend((reserved, released))
            time.sleep(0.005)

    threads = [threading.Thread(target=send, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=sequence, args=(products[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    rng = random.Random(0)
    broker = redis.Redis.from_url(settings.broker_url)
    #: Per kill, the messages the killed worker held (fetched, not acked), read the instant after the kill.
    in_hand: list[int] = []
    try:
        for _ in range(kills):
            worker = start_worker(settings)
            time.sleep(rng.uniform(0.2, 0.8))  # mid-stream: batches in flight, BRPOPs outstanding
            worker.kill()
            in_hand.append(int(unacked_count(broker)))  # nothing restores them until the next worker starts
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    start_worker(settings)
    outcomes = wait_while_draining(receipts, engine)
    assert {o.status for o in producer.wait_all(stocked, timeout_s=90)} == {"applied"}
    sequence_outcomes = producer.wait_all(sequenced, timeout_s=90)
    reordered = [o for o in sequence_outcomes if o.effective.status != "applied" or o.effective.reason]

    with engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
        received_total = sum(product_state(conn, 500 + t)["total_received"] for t in range(4))
        liked_rows = set(conn.execute(select(ArticleLike.article_id, ArticleLike.user_id)))
        doubled = units_doubled(received_total, restocks[0]) + doubled_in_tables(conn)
    expected_rows = len(receipts) + len(sequenced) + len(products)
    report(
        fault,
        injected=kills,
        sent=len(receipts) + len(sequenced),
        lost=max(0, expected_rows - ledger_rows) + max(0, restocks[0] - received_total),
        doubled=doubled,
        out_of_order=len(liked_rows ^ {pair for pair, liked in model.items() if liked}) + len(reordered),
    )
    # The kills landed mid-batch: some killed worker held messages (fetched, not acked), which came back to the
    # next worker (a kill between batches only would prove nothing). Those it had committed came back duplicate.
    duplicates = sum(1 for o in [*outcomes, *sequence_outcomes] if o.status == "duplicate")
    print(f"kills with messages in hand: {sum(1 for n in in_hand if n)}/{kills}; duplicates reported: {duplicates}")
    assert any(in_hand), in_hand
    assert len(outcomes) == len(receipts) > min_events
    assert all(o.effective.status in ("applied", "rejected") for o in outcomes)
    with engine.connect() as conn:
        # Every event applied exactly once: one ledger row each, no more.
        assert conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == expected_rows
        # Every reserve/release step in its order: none rejected, each unit back on the shelf.
        assert len(sequenced) > min_sequenced
        assert not reordered, reordered[:5]
        for product in products:
            state = product_state(conn, product)
            assert (state["available"], state["reserved"], state["total_received"]) == (1, 0, 1)
        # Restocks of 1 unit with fresh keys: a lost one would show as less, a doubled one as more.
        received = sum(product_state(conn, 500 + t)["total_received"] for t in range(4))
        assert received == restocks[0]
        # The last action of each user wins, whatever the redeliveries did to the order.
        rows = set(conn.execute(select(ArticleLike.article_id, ArticleLike.user_id)))
        assert rows == {pair for pair, liked in model.items() if liked}
        assert check_invariants(conn).ok


def wait_while_draining(
    receipts: list[producer.Receipt], engine: Engine, *, stall_s: float = 60, cap_s: float = 300
) -> list[producer.Outcome]:
    """The outcomes of ``receipts``, waited on as long as the worker applies events (the ledger grows within each
    ``stall_s``), at most ``cap_s``. The backlog the kills leave is what the producers sent meanwhile, and each worker
    start takes longer on a loaded machine: a fixed 90 s ran out at a load average of 10-14 with the last worker still
    applying (before the per-queue layout too). A worker that stops applying still fails within ``stall_s``."""
    deadline = time.monotonic() + cap_s
    applied = -1
    while True:
        try:
            return producer.wait_all(receipts, timeout_s=max(1.0, min(stall_s, deadline - time.monotonic())))
        except OutcomeTimeout:
            with engine.connect() as conn:
                now = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
            if now == applied or time.monotonic() >= deadline:
                raise
            print(f"still draining: {now} ledger rows, {now - max(applied, 0)} more in the last wait")
            applied = now


def test_a_killed_workers_messages_come_back_after_the_visibility_timeout(
    clean: Settings, start_worker: Callable[..., WorkerProcess], engine: Engine
) -> None:
    """Nothing takes the killed worker's partitions: its messages come back to their queue by the visibility
    timeout alone (``SEQPROC_VISIBILITY_TIMEOUT_S``, restored by a worker that serves other partitions), not before
    it, and are applied once when a worker for those partitions starts."""
    settings = clean.model_copy(update={"visibility_timeout_s": 5, "restore_interval_s": 1, "apply_time_limit_s": 2})
    article = next(a for a in range(1, 100) if partition_for(article_key(a), settings.partitions) < 8)
    queue = queue_name(partition_for(article_key(article), settings.partitions))
    broker = redis.Redis.from_url(settings.broker_url)
    start_worker(settings, "8-15")  # alive all along; it never takes 0-7
    receipts = [producer.like(article, user) for user in range(1, 11)]
    sent = {r.event_id for r in receipts}
    # Its flush holds the messages it fetched (a 30 s stall): killed with all of them in hand.
    doomed = start_worker(settings, "0-7", SEQPROC_FAULT_APPLY_DELAY_S="30")
    wait_for(lambda: set(unacked_event_ids(broker)) == sent, 15, "the doomed worker holding every message")
    fetched_at = time.monotonic()
    doomed.kill()
    time.sleep(2.0)
    assert set(unacked_event_ids(broker)) == sent  # not restored before the visibility timeout
    assert broker.llen(queue) == 0
    wait_for(lambda: set(queued_event_ids(broker, queue)) == sent, 20, "the messages back in their queue")
    back_after_s = time.monotonic() - fetched_at
    assert unacked_count(broker) == 0
    assert back_after_s >= settings.visibility_timeout_s - 0.5, back_after_s
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == 0  # nobody applied them

    start_worker(settings, "0-7")
    outcomes = producer.wait_all(receipts, timeout_s=30)
    assert [o.status for o in outcomes] == ["applied"] * 10
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == 10
    print(f"messages back {back_after_s:.1f} s after the fetch (visibility timeout {settings.visibility_timeout_s} s)")
