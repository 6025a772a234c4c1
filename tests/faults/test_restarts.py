"""Servers and workers going away for real: SIGTERM, a PostgreSQL restart, a Redis restart with persistence, and a
producer that loses its broker. Bounded: each test takes seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import redis
from sqlalchemy import Engine, func, select

from seqproc import producer
from seqproc.models.errors import OutcomeTimeout, PublishError
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.producer.publish import publisher_for
from seqproc.worker.engine.sequence import lost_total
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import PrivateRedis, require, require_tools, wait_for
from tests.faults.landing import unacked_count, unacked_event_ids
from tests.faults.matrix import doubled_in_tables, report, report_units, units_doubled

pytestmark = pytest.mark.services


#: The product the sequences restock one unit at a time, each with a fresh key: its units received against the
#: units sent count what was lost or doubled, whatever the ledger says.
RESTOCKED = 399


def sequences(products: list[int], stop: threading.Event, receipts: list[producer.Receipt], units: list[int]) -> None:
    """Per product: reserve its one unit, release it, again and again: any reordering shows as a rejection. Each
    round also restocks :data:`RESTOCKED` by one unit, counted in ``units[0]``."""
    n = 0
    while not stop.is_set():
        n += 1
        for product in products:
            receipts.append(producer.reserve(product, 1, reservation_id=f"{product}-{n}"))
            receipts.append(producer.release(product, f"{product}-{n}"))
        receipts.append(producer.restock(RESTOCKED, 1))
        units[0] += 1
        time.sleep(0.005)


@contextmanager
def chains(products: list[int]) -> Iterator[tuple[list[producer.Receipt], list[int]]]:
    """:func:`sequences` on ``products`` (each stocked with one unit first: sent ahead of its chain, on its queue),
    sent from a thread for as long as the block runs: yields the receipts and the units restocked, as they grow."""
    for product in products:
        producer.restock(product, 1)
    receipts: list[producer.Receipt] = []
    units = [0]
    stop = threading.Event()
    sender = threading.Thread(target=sequences, args=(products, stop, receipts, units))
    sender.start()
    try:
        yield receipts, units
    finally:
        stop.set()
        sender.join(60)  # its last calls wait for the publish timeout at most
    assert not sender.is_alive(), "the sender did not stop within 60 s"


def report_sequences(
    fault: str,
    outcomes: list[producer.Outcome],
    sent: int,
    engine: Engine,
    extra: int,
    units: int,
    *,
    injected: int = 1,
) -> None:
    with engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() - extra
        received = product_state(conn, RESTOCKED)["total_received"]
        doubled = units_doubled(received, units) + doubled_in_tables(conn)
    report(
        fault,
        injected=injected,
        sent=sent,
        lost=max(0, sent - ledger_rows) + max(0, units - received),
        doubled=doubled,
        out_of_order=sum(1 for o in outcomes if o.effective.reason in ("cancelled", "insufficient_stock")),
    )


def assert_all_applied_in_order(outcomes: list[producer.Outcome]) -> None:
    assert Counter(o.effective.status for o in outcomes) == {"applied": len(outcomes)}
    assert not [o for o in outcomes if o.effective.reason]  # no cancelled / insufficient_stock: order held


def test_sigterm_finishes_the_batch_in_hand_and_redelivers_nothing_committed(
    clean: Settings, start_worker, engine: Engine
) -> None:
    """SIGTERM lands while the worker holds fetched messages in its batch, not yet applied (a batch closes after
    3 s here, never on size): it commits and acks them before it exits. Read from the broker and the ledger, not
    from the log: after the exit ``unacked`` is empty and the ledger holds exactly the batch committed before plus
    the batch in hand at the signal. A worker that rolled back its batch and left it to a redelivery fails here."""
    settings = clean.model_copy(
        update={
            "max_events_per_message": 5,
            "batch_size": 10_000,
            "batch_interval_ms": 3000,
            "batch_max_wait_ms": 3000,
        }
    )
    producer.configure(settings)
    worker = start_worker(settings)
    broker = redis.Redis.from_url(settings.broker_url)

    def restocks(n: int) -> list[producer.Receipt]:
        return producer.send_many([{"type": "restock", "product_id": 5, "quantity": 1} for _ in range(n)])

    def received() -> int:
        with engine.connect() as conn:
            return int(product_state(conn, 5)["total_received"])

    before = restocks(100)  # 20 messages, one batch
    wait_for(lambda: received() == 100, 30, "the first batch committed")
    in_hand = restocks(100)
    ids = {r.event_id for r in in_hand}
    wait_for(lambda: set(unacked_event_ids(broker)) == ids, 10, "the second batch fetched, in hand")
    assert received() == 100  # in hand, not applied: the batch closes seconds later
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert time.monotonic() - started < 30
    assert unacked_count(broker) == 0  # nothing left to a redelivery
    assert broker.llen(before[0].queue) == 0
    with engine.connect() as conn:
        ledger = set(conn.execute(select(LedgerEntry.key)).scalars())
    # Exactly the batch committed before and the batch in hand at the signal, each event once.
    assert ledger == {f"restock:{r.idempotency_key}" for r in [*before, *in_hand]}
    assert received() == 200

    start_worker(settings)
    outcomes = producer.wait_all([*before, *in_hand], timeout_s=60)
    statuses = Counter(o.status for o in outcomes)
    with engine.connect() as conn:
        units = int(product_state(conn, 5)["total_received"])
        report_units(conn, "worker SIGTERM with a batch in hand", injected=1, sent=200, received=units)
    # Committed before the exit and acked: not redelivered, so never reported again as a duplicate.
    assert statuses == {"applied": 200}
    assert units == 200


def test_postgresql_restart_mid_stream_is_waited_out_in_place(clean: Settings, start_worker, engine: Engine) -> None:
    require_tools("pg_ctlcluster")  # it restarts the local PostgreSQL (Debian's cluster tools)
    require(os.path.isdir("/etc/postgresql"), "a local PostgreSQL cluster (/etc/postgresql)", problem="is not found")
    worker = start_worker(clean)
    products = list(range(300, 310))
    with chains(products) as (receipts, units):
        time.sleep(1)
        version = sorted(os.listdir("/etc/postgresql"))[0]
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "stop", "-m", "fast"],
            check=True,
            timeout=60,
        )
        time.sleep(3)  # events keep coming; the worker retries in place
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"], check=True, timeout=60)
        time.sleep(2)
    outcomes = producer.wait_all(receipts, timeout_s=90)
    report_sequences(
        "PostgreSQL stopped and started mid-stream", outcomes, len(receipts), engine, len(products), units[0]
    )
    assert len(outcomes) > 200
    assert_all_applied_in_order(outcomes)
    assert worker.process.poll() is None  # it resumed without a restart
    with engine.connect() as conn:
        for product in products:
            assert (product_state(conn, product)["available"], product_state(conn, product)["reserved"]) == (1, 0)
        assert product_state(conn, RESTOCKED)["total_received"] == units[0]
        assert check_invariants(conn).ok


def test_queued_events_survive_a_redis_restart_with_persistence(
    clean: Settings, private_redis: PrivateRedis, start_worker, engine: Engine
) -> None:
    settings = clean.model_copy(update={"broker_url": private_redis.url(0), "result_backend": private_redis.url(1)})
    producer.configure(settings)
    receipts = [producer.restock(6, 1) for _ in range(200)]  # no worker yet: all of them wait in Redis
    private_redis.stop()
    private_redis.start()
    start_worker(settings)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    with engine.connect() as conn:
        received = product_state(conn, 6)["total_received"]
        report_units(
            conn, "Redis (append-only) restarted with 200 events queued", injected=1, sent=200, received=received
        )
    assert Counter(o.status for o in outcomes) == {"applied": 200}
    assert received == 200


def test_a_producer_that_loses_its_broker_says_so_and_never_claims_a_send(
    clean: Settings, private_redis: PrivateRedis, start_worker, engine: Engine
) -> None:
    settings = clean.model_copy(
        update={"broker_url": private_redis.url(0), "result_backend": private_redis.url(1), "publish_timeout_s": 2}
    )
    producer.configure(settings)
    sent = [producer.restock(7, 1)]
    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(PublishError, match="NOT sent"):
        producer.restock(7, 1)
    assert time.monotonic() - started < 10  # a bounded wait, not a hang
    private_redis.start()
    sent.append(producer.restock(7, 1))  # the producer reconnects by itself
    start_worker(settings)
    assert [o.status for o in producer.wait_all(sent, timeout_s=60)] == ["applied", "applied"]
    with engine.connect() as conn:
        received = product_state(conn, 7)["total_received"]
        report_units(
            conn,
            "producer loses its broker mid-send (PublishError), broker back",
            injected=1,
            sent=2,
            received=received,
        )
    assert received == 2  # the unit reported not sent was not, and each sent one arrived once


def test_outcomes_wait_for_a_result_backend_that_went_away(
    clean: Settings, start_redis: Callable[..., PrivateRedis], start_worker, engine: Engine
) -> None:
    """The worker commits, cannot publish the outcomes (their Redis is down): it retries in place before acking,
    so every waiter gets its outcome once that Redis is back, and nothing is acked without its outcome."""
    backend = start_redis(persistent=False)
    settings = clean.model_copy(update={"result_backend": backend.url(0)})
    producer.configure(settings)
    start_worker(settings)
    backend.stop()
    # One message, so one batch: the worker holds it (retrying the outcomes in place) and takes nothing else.
    receipts = producer.send_many([{"type": "restock", "product_id": 41, "quantity": 1} for _ in range(20)])
    broker = redis.Redis.from_url(settings.broker_url)
    with engine.connect() as conn:
        wait_for(
            lambda: conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == 20,
            30,
            "the events committed",
        )
    time.sleep(1.0)
    assert unacked_count(broker) >= 1  # committed, not acked: their outcomes are not out yet
    backend.start()
    outcomes = producer.wait_all(receipts, timeout_s=60)
    assert [o.status for o in outcomes] == ["applied"] * 20
    wait_for(lambda: unacked_count(broker) == 0, 30, "the messages acked")
    with engine.connect() as conn:
        received = product_state(conn, 41)["total_received"]
        assert check_invariants(conn).ok
        report_units(
            conn,
            "result backend (outcomes' Redis) down while the worker commits, then back",
            injected=1,
            sent=len(receipts),
            received=received,
        )
    assert received == 20


@pytest.mark.parametrize("persistence", ["off", "everysec"])
def test_direct_sends_held_by_a_redis_that_crashes(
    clean: Settings, start_redis: Callable[..., PrivateRedis], start_worker, engine: Engine, persistence: str
) -> None:
    """The broker's redis-server is killed with SIGKILL (a crash, not a clean shutdown) while it holds 200 direct
    sends (``seqproc.restock``: each call returned, so each was sent), and started again. Without persistence the
    crash loses all of them, and the producer was never told: only ``wait()`` timing out says so (the outbox is the
    way not to lose them). With append-only persistence (``appendfsync everysec``, as in docker-compose.yml) the
    process crash loses none: each write reached the append-only file (in the OS's cache) before its reply; what
    ``everysec`` risks is a crash of the machine (the last second not yet on disk, which ``test_outbox_faults``
    reproduces by cutting the file)."""
    broker = start_redis(persistent=persistence != "off", fsync="everysec")
    settings = clean.model_copy(update={"broker_url": broker.url(0)})  # outcomes on the test's own Redis
    producer.configure(settings)
    receipts = [producer.restock(8, 1) for _ in range(200)]  # no worker yet: all of them wait in the broker
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.start()
    start_worker(settings)
    if persistence == "off":
        with pytest.raises(OutcomeTimeout, match="200 of 200 events have no outcome"):
            producer.wait_all(receipts, timeout_s=5)
    else:
        assert Counter(o.status for o in producer.wait_all(receipts, timeout_s=60)) == {"applied": 200}
    with engine.connect() as conn:
        received = int(product_state(conn, 8)["total_received"])
        report_units(
            conn,
            f"broker Redis SIGKILL with 200 direct sends queued, persistence {persistence}",
            injected=1,
            sent=200,
            received=received,
        )
    assert received == (0 if persistence == "off" else 200)


def test_a_producers_last_sends_lost_in_a_crash_are_counted_by_its_mark(
    clean: Settings, start_redis: Callable[..., PrivateRedis], start_worker, engine: Engine
) -> None:
    """The tail case of loss detection: 50 direct sends held by a broker without persistence that crashes, and no
    send after it, so no later message of the producer reveals the gap. The producer's mark keeper
    (``producer.marks``) sees the master's replication id change and marks the partition with where its
    acknowledged events end: the worker counts all 50 lost. (Its looks are made by hand here, one before the
    crash and one after; on its own it looks every ``SEQPROC_SEQUENCE_MARK_S``.)"""
    broker = start_redis(persistent=False)
    settings = clean.model_copy(
        update={"broker_url": broker.url(0), "loss_grace_s": 1, "sequence_mark_s": 3600}
    )  # outcomes on the test's own Redis
    producer.configure(settings)
    receipts = [producer.restock(8, 1) for _ in range(50)]  # no worker yet: all of them wait in the broker
    keeper = publisher_for(settings).marks
    assert keeper is not None
    assert keeper.look() == 0  # the first look notes the master's replication id
    assert broker.process is not None
    broker.process.send_signal(signal.SIGKILL)
    broker.process.wait(10)
    broker.start()
    assert keeper.look() == 1  # another master: one mark, on product 8's partition
    start_worker(settings)
    with engine.connect() as conn:

        def counted() -> int:
            conn.rollback()
            return lost_total(conn)

        wait_for(lambda: counted() >= 50, 30, "the 50 events counted lost")
        received = int(product_state(conn, 8)["total_received"])
        report(
            "broker Redis SIGKILL, no persistence, 50 direct sends queued and none after (the producer's mark)",
            injected=1,
            sent=50,
            lost=50 - received,
            doubled=units_doubled(received, 50) + doubled_in_tables(conn),
            out_of_order=0,
            lost_detected=counted(),
        )
        assert received == 0
        assert counted() == 50
    with pytest.raises(OutcomeTimeout):
        receipts[-1].wait(timeout_s=0.5)
