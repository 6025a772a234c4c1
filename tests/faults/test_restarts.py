"""Servers and workers going away for real: SIGTERM, a PostgreSQL restart, a Redis restart with persistence, and a
producer that loses its broker. Bounded: each test takes seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from seqproc import producer
from seqproc.models.errors import PublishError
from seqproc.models.settings import Settings
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.worker.ops.inspect import article_state, check_invariants, product_state
from tests.conftest import PrivateRedis, require, require_tools, wait_for
from tests.faults.matrix import report, report_applied

pytestmark = pytest.mark.services


def sequences(products: list[int], stop: threading.Event, receipts: list[producer.Receipt]) -> None:
    """Per product: reserve its one unit, release it, again and again: any reordering shows as a rejection."""
    n = 0
    while not stop.is_set():
        n += 1
        for product in products:
            receipts.append(producer.reserve(product, 1, reservation_id=f"{product}-{n}"))
            receipts.append(producer.release(product, f"{product}-{n}"))
        time.sleep(0.005)


def report_sequences(fault: str, outcomes: list[producer.Outcome], sent: int, engine: Engine, extra: int) -> None:
    with engine.connect() as conn:
        ledger_rows = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() - extra
    report_applied(
        fault,
        injected=1,
        sent=sent,
        applied=ledger_rows,
        out_of_order=sum(1 for o in outcomes if o.effective.reason in ("cancelled", "insufficient_stock")),
    )


def assert_all_applied_in_order(outcomes: list[producer.Outcome]) -> None:
    assert Counter(o.effective.status for o in outcomes) == {"applied": len(outcomes)}
    assert not [o for o in outcomes if o.effective.reason]  # no cancelled / insufficient_stock: order held


def test_sigterm_finishes_the_batch_in_hand_and_redelivers_nothing_committed(
    clean: Settings, start_worker, engine: Engine
) -> None:
    worker = start_worker(clean)
    receipts = producer.send_many([{"type": "like", "article_id": 5, "user_id": u} for u in range(1, 3001)])

    def applying() -> bool:
        with engine.connect() as conn:
            return article_state(conn, 5)["like_count"] > 0

    wait_for(applying, 30, "the worker to start applying")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.process.wait(30) == 0
    assert time.monotonic() - started < 30
    with engine.connect() as conn:
        done_before = article_state(conn, 5)["like_count"]
    start_worker(clean)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    statuses = Counter(o.status for o in outcomes)
    with engine.connect() as conn:
        count = article_state(conn, 5)["like_count"]
    report(
        "worker SIGTERM with a batch in hand",
        injected=1,
        sent=3000,
        lost=3000 - count,
        doubled=statuses["duplicate"],
        out_of_order=0,
    )
    # Committed before the exit and acked: not redelivered, so never reported again as a duplicate.
    assert statuses == {"applied": 3000}
    with engine.connect() as conn:
        assert article_state(conn, 5)["like_count"] == 3000
        assert conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == 3000
    assert 0 < done_before <= 3000


def test_postgresql_restart_mid_stream_is_waited_out_in_place(clean: Settings, start_worker, engine: Engine) -> None:
    require_tools("pg_ctlcluster")  # it restarts the local PostgreSQL (Debian's cluster tools)
    require(os.path.isdir("/etc/postgresql"), "a local PostgreSQL cluster (/etc/postgresql)", problem="is not found")
    worker = start_worker(clean)
    products = list(range(300, 310))
    for product in products:
        producer.restock(product, 1).wait(30)
    receipts: list[producer.Receipt] = []
    stop = threading.Event()
    sender = threading.Thread(target=sequences, args=(products, stop, receipts))
    sender.start()
    try:
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
    finally:
        stop.set()
        sender.join(60)  # its last calls wait for the publish timeout at most
    assert not sender.is_alive(), "the sender did not stop within 60 s"
    outcomes = producer.wait_all(receipts, timeout_s=90)
    report_sequences("PostgreSQL stopped and started mid-stream", outcomes, len(receipts), engine, len(products))
    assert len(outcomes) > 200
    assert_all_applied_in_order(outcomes)
    assert worker.process.poll() is None  # it resumed without a restart
    with engine.connect() as conn:
        for product in products:
            assert (product_state(conn, product)["available"], product_state(conn, product)["reserved"]) == (1, 0)
        assert check_invariants(conn).ok


def test_queued_events_survive_a_redis_restart_with_persistence(
    clean: Settings, private_redis: PrivateRedis, start_worker, engine: Engine
) -> None:
    settings = clean.model_copy(update={"broker_url": private_redis.url(0), "result_backend": private_redis.url(1)})
    producer.configure(settings)
    receipts = [producer.like(6, user) for user in range(1, 201)]  # no worker yet: all of them wait in Redis
    private_redis.stop()
    private_redis.start()
    start_worker(settings)
    outcomes = producer.wait_all(receipts, timeout_s=60)
    with engine.connect() as conn:
        count = article_state(conn, 6)["like_count"]
    report_applied("Redis (append-only) restarted with 200 events queued", injected=1, sent=200, applied=count)
    assert Counter(o.status for o in outcomes) == {"applied": 200}
    with engine.connect() as conn:
        assert article_state(conn, 6)["like_count"] == 200


def test_a_producer_that_loses_its_broker_says_so_and_never_claims_a_send(
    clean: Settings, private_redis: PrivateRedis, start_worker, engine: Engine
) -> None:
    settings = clean.model_copy(
        update={"broker_url": private_redis.url(0), "result_backend": private_redis.url(1), "publish_timeout_s": 2}
    )
    producer.configure(settings)
    sent = [producer.like(7, 1)]
    private_redis.stop()
    started = time.monotonic()
    with pytest.raises(PublishError, match="NOT sent"):
        producer.like(7, 2)
    assert time.monotonic() - started < 10  # a bounded wait, not a hang
    private_redis.start()
    sent.append(producer.like(7, 3))  # the producer reconnects by itself
    start_worker(settings)
    assert [o.status for o in producer.wait_all(sent, timeout_s=60)] == ["applied", "applied"]
    with engine.connect() as conn:
        assert article_state(conn, 7)["like_count"] == 2  # user 2's like was reported not sent, and it was not
        applied = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
    report_applied(
        "producer loses its broker mid-send (PublishError), broker back", injected=1, sent=len(sent), applied=applied
    )


def test_outcomes_wait_for_a_result_backend_that_went_away(
    clean: Settings, tmp_path: Path, start_worker, engine: Engine
) -> None:
    """The worker commits, cannot publish the outcomes (their Redis is down): it retries in place before acking,
    so every waiter gets its outcome once that Redis is back, and nothing is acked without its outcome."""
    backend = PrivateRedis(tmp_path, persistent=False)
    backend.start()
    settings = clean.model_copy(update={"result_backend": backend.url(0)})
    producer.configure(settings)
    try:
        start_worker(settings)
        backend.stop()
        # One message, so one batch: the worker holds it (retrying the outcomes in place) and takes nothing else.
        receipts = producer.send_many([{"type": "like", "article_id": 41, "user_id": user} for user in range(1, 21)])
        broker = redis.Redis.from_url(settings.broker_url)
        with engine.connect() as conn:
            wait_for(
                lambda: conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one() == 20,
                30,
                "the events committed",
            )
        time.sleep(1.0)
        assert broker.hlen("unacked") >= 1  # committed, not acked: their outcomes are not out yet
        backend.start()
        outcomes = producer.wait_all(receipts, timeout_s=60)
        assert [o.status for o in outcomes] == ["applied"] * 20
        wait_for(lambda: broker.hlen("unacked") == 0, 30, "the messages acked")
        with engine.connect() as conn:
            assert article_state(conn, 41)["like_count"] == 20
            applied = conn.execute(select(func.count()).select_from(LedgerEntry)).scalar_one()
            assert check_invariants(conn).ok
        report_applied(
            "result backend (outcomes' Redis) down while the worker commits, then back",
            injected=1,
            sent=len(receipts),
            applied=applied,
        )
    finally:
        backend.stop()
