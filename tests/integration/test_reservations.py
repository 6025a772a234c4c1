"""A reservation id used again on another product, end to end (PostgreSQL, Redis, a real worker): rejected with
``product_mismatch`` as a release or a commit naming another product is; on the same product, a duplicate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from sqlalchemy import Engine, text

import seqproc
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for, product_key
from seqproc.worker.ops.inspect import product_state
from tests.conftest import WorkerProcess

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
