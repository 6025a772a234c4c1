"""Real statement timeouts (PostgreSQL's ``statement_timeout``, set from ``SEQPROC_APPLY_TIME_LIMIT_S``), caused
by a row lock the test holds: one timeout is retried in place and counted once; a statement that times out every
time is given up on after three and parks its key, while the partition's other keys flow on."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy import Engine, make_url, select, text

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.models.tables.partition import Partition
from seqproc.models.wire import partition_for, product_key
from seqproc.worker.ops.inspect import product_state
from tests.conftest import WorkerProcess, free_port, wait_for
from tests.integration.test_metrics import scrape, value

pytestmark = pytest.mark.services

#: ``SEQPROC_APPLY_TIME_LIMIT_S`` of the worker: each statement it runs is cancelled after this long.
LIMIT_S = 1.0


@contextmanager
def row_locked(settings: Settings, product: int) -> Iterator[psycopg.Connection]:
    """Hold the product's stock row (``FOR UPDATE``) in a transaction of the test's own: the worker's write of that
    row waits on it until its statement times out."""
    dsn = make_url(settings.database_url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn:
        conn.execute("SELECT 1 FROM product_stock WHERE product_id = %s FOR UPDATE", (product,))
        yield conn
        conn.rollback()


def two_products(settings: Settings, first: int) -> tuple[int, int, int]:
    """Two products of one partition: (``first``, another, their partition)."""
    partition = partition_for(product_key(first), settings.partitions)
    same = (p for p in range(first + 1, 10_000) if partition_for(product_key(p), settings.partitions) == partition)
    return first, next(same), partition


def test_a_retried_transaction_is_counted_once(
    clean: Settings, start_worker: Callable[..., WorkerProcess], engine: Engine
) -> None:
    """The stock row is held a little longer than one time limit: the worker's first transaction times out and is
    retried in place, the second commits. The counters (Prometheus, and the partition row's) count its events
    once."""
    settings = clean.model_copy(update={"apply_time_limit_s": LIMIT_S})
    product, _, partition = two_products(settings, 11)
    port = free_port()
    worker = start_worker(settings, "0-15", SEQPROC_METRICS_PORT=str(port))
    assert producer.restock(product, 1).wait(30).status == "applied"
    before = scrape(port)
    with engine.connect() as conn:
        counted_before = conn.execute(select(Partition.applied).where(Partition.partition == partition)).scalar_one()
    with row_locked(settings, product):
        receipts = producer.send_many([{"type": "restock", "product_id": product, "quantity": 1} for _ in range(10)])
        wait_for(lambda: "transient error (attempt 1)" in worker.log(), 10, "the first attempt to time out")
        time.sleep(LIMIT_S / 2)  # the retry is waiting on the row too: it commits once the lock goes
    assert {o.status for o in producer.wait_all(receipts, timeout_s=30)} == {"applied"}
    with engine.connect() as conn:
        assert product_state(conn, product)["total_received"] == 11
        counted = conn.execute(select(Partition.applied).where(Partition.partition == partition)).scalar_one()
    assert counted - counted_before == 10
    after = scrape(port)
    labels = {"partition": str(partition), "type": "restock"}
    applied = value(after, "seqproc_events_applied_total", **labels) - value(
        before, "seqproc_events_applied_total", **labels
    )
    assert applied == 10
    assert "statement timeout" in worker.log()  # the retry was a real statement timeout


def test_a_statement_that_times_out_three_times_parks_its_key(
    clean: Settings, start_worker: Callable[..., WorkerProcess], engine: Engine
) -> None:
    """The stock row stays held: every statement that writes it times out. After three timeouts the batch is redone
    event by event, and the event that still times out three times is dead-lettered and its key parked; the other
    product of the same partition is applied meanwhile, and the key's later events follow it into the dead-letter
    store."""
    settings = clean.model_copy(update={"apply_time_limit_s": LIMIT_S})
    stuck, other, _ = two_products(settings, 31)
    worker = start_worker(settings, "0-15")
    assert producer.restock(stuck, 1).wait(30).status == "applied"
    with row_locked(settings, stuck):
        held = producer.restock(stuck, 5)
        flowing = producer.restock(other, 5)
        outcome = held.wait(60)
        assert (outcome.status, outcome.reason) == ("rejected", "dead_lettered")
        assert flowing.wait(30).status == "applied"
        later = producer.restock(stuck, 1).wait(30)
        assert (later.status, later.reason) == ("rejected", "parked")
    with engine.connect() as conn:
        parked = conn.execute(text("SELECT entity_key FROM parked_key")).scalars().all()
        errors = conn.execute(text("SELECT error FROM dead_letter WHERE entity_key = :k"), {"k": f"product:{stuck}"})
        error = errors.scalars().first()
        assert product_state(conn, stuck)["total_received"] == 1
        assert product_state(conn, other)["total_received"] == 5
    assert parked == [f"product:{stuck}"]
    assert error is not None
    assert "statement timeout" in error
    assert "statement timed out 3 times" in worker.log()
