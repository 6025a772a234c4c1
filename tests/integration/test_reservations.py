"""A reservation id used again on another product, end to end (PostgreSQL, Redis, a real worker): rejected with
``product_mismatch`` as a release or a commit naming another product is; on the same product, a duplicate."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

import seqproc
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for, product_key
from seqproc.worker.beat.jobs import expire_reservations
from seqproc.worker.beat.singleton import singleton
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import WorkerProcess, wait_for

pytestmark = pytest.mark.services


def test_a_reservation_id_used_again_on_another_product_is_rejected(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    start_worker(clean, "0-15")
    first, other = (
        41,
        next(p for p in range(42, 99) if partition_for(product_key(p), 16) != partition_for(product_key(41), 16)),
    )
    seqproc.producer.wait_all([seqproc.restock(first, 5), seqproc.restock(other, 5)], timeout_s=30)
    assert seqproc.reserve(first, 2, reservation_id="order-9").wait(timeout_s=30) == Outcome("applied")
    assert seqproc.reserve(other, 1, reservation_id="order-9").wait(timeout_s=30) == Outcome(
        "rejected", "product_mismatch"
    )
    assert seqproc.release(other, "order-9").wait(timeout_s=30) == Outcome("rejected", "product_mismatch")
    assert seqproc.reserve(first, 2, reservation_id="order-9").wait(timeout_s=30) == Outcome(
        "duplicate", first=Outcome("applied")
    )
    with engine.connect() as conn:
        assert (product_state(conn, first)["reserved"], product_state(conn, other)["reserved"]) == (2, 0)
        row = conn.execute(text("SELECT product_id, status FROM reservation WHERE reservation_id = 'order-9'")).one()
    assert tuple(row) == (first, "active")


def test_the_expiry_job_racing_the_callers_own_release_gives_the_units_back_once(
    clean: Settings, engine: Engine, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A reservation past its time limit: the ``expire_reservations`` job and the caller release it at the same
    instant, while no worker runs (so that both releases are sent before either is applied: the job reads the
    reservation still active). Both carry the key ``release:<id>``: one is applied, the other is a duplicate (the
    partition's counters say so), and the units come back once."""
    settings = clean.model_copy(update={"reservation_ttl_s": 1})
    first = start_worker(settings, "0-15")
    product = 61
    partition = partition_for(product_key(product), settings.partitions)
    assert seqproc.restock(product, 3).wait(timeout_s=30) == Outcome("applied")
    assert seqproc.reserve(product, 2, reservation_id="race-1").wait(timeout_s=30) == Outcome("applied")

    def expired() -> bool:
        with engine.connect() as conn:
            query = "SELECT expires_at < now() FROM reservation WHERE reservation_id = 'race-1'"
            return bool(conn.execute(text(query)).scalar_one())

    wait_for(expired, 10, "the reservation past its time limit")
    assert first.stop() == 0
    counters = partition_counters(engine, partition)
    start = threading.Barrier(2)
    sent_by_job: list[str] = []
    mine: list[seqproc.Receipt] = []

    def job() -> None:
        start.wait()
        with singleton(engine, settings, "expire_reservations", interval_s=3600) as run:
            sent_by_job.append(expire_reservations(engine, settings, run))

    def caller() -> None:
        start.wait()
        mine.append(seqproc.release(product, "race-1"))

    threads = [threading.Thread(target=job), threading.Thread(target=caller)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sent_by_job == ["sent 1 release(s) through the partition queues"]
    start_worker(settings, "0-15")
    outcome = mine[0].wait(timeout_s=30)
    assert outcome in (Outcome("applied"), Outcome("duplicate", first=Outcome("applied")))
    # Both releases were applied by the worker: one applied, the other one a duplicate of it.
    wait_for(
        lambda: partition_counters(engine, partition) == (counters[0] + 1, counters[1] + 1, counters[2]),
        30,
        "one release applied and one duplicate",
    )
    with engine.connect() as conn:
        state = product_state(conn, product)
        status = conn.execute(text("SELECT status FROM reservation WHERE reservation_id = 'race-1'")).scalar_one()
        assert check_invariants(conn).ok
    assert (state["available"], state["reserved"], state["total_received"]) == (3, 0, 3)
    assert status == "released"


def partition_counters(engine: Engine, partition: int) -> tuple[int, int, int]:
    """(applied, duplicates, rejected) as the partition row counts them, in the apply transactions."""
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT applied, duplicates, rejected FROM partition WHERE partition = :p"), {"p": partition}
        ).one()
    return int(row[0]), int(row[1]), int(row[2])
