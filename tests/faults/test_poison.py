"""A poison event (it breaks a constraint: think of a bug) parks its key without blocking its partition; its later
events wait in the dead-letter store in order; `seqproc deadletter replay` applies them exactly once, in order."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, text

from seqproc import producer
from seqproc.models.settings import Settings
from seqproc.worker.ops.inspect import check_invariants, product_state
from tests.conftest import ROOT, settings_env

pytestmark = pytest.mark.services

POISONED = 666


@pytest.fixture
def poison(engine: Engine) -> Iterator[None]:
    """A constraint that product 666 cannot satisfy once it has 100 units: its restock of 150 fails for good."""
    with engine.begin() as conn:
        conn.execute(
            text(
                f"ALTER TABLE product_stock ADD CONSTRAINT test_poison CHECK (product_id <> {POISONED} "
                "OR total_received < 100)"
            )
        )
    yield
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE product_stock DROP CONSTRAINT IF EXISTS test_poison"))


def seqproc(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args],
        cwd=ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_poison_parks_its_key_and_replay_applies_in_order(
    clean: Settings, start_worker, engine: Engine, poison: None
) -> None:
    start_worker(clean)
    bad = producer.restock(POISONED, 150)
    behind = [producer.restock(POISONED, 10), producer.reserve(POISONED, 155, reservation_id="big")]
    other = producer.restock(777, 5)
    assert (bad.wait(30).status, bad.wait(30).reason) == ("rejected", "dead_lettered")
    assert [(r.wait(30).status, r.wait(30).reason) for r in behind] == [("rejected", "parked")] * 2
    assert other.wait(30).status == "applied"  # the partition was not blocked

    listed = json.loads(seqproc(clean, "deadletter", "list", "--key", f"product:{POISONED}", "--json").stdout)
    assert [d["event_key"] for d in listed["dead_letters"]] == [
        bad.idempotency_key,
        behind[0].idempotency_key,
        "reserve:big",
    ]
    assert "test_poison" in listed["dead_letters"][0]["error"]
    assert [p["entity_key"] for p in listed["parked_keys"]] == [f"product:{POISONED}"]

    with engine.begin() as conn:  # the cause is fixed
        conn.execute(text("ALTER TABLE product_stock DROP CONSTRAINT test_poison"))
    replayed = seqproc(clean, "deadletter", "replay", f"product:{POISONED}")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 3" in replayed.stdout
    # The reserve of 155 only fits if both restocks came back before it: order kept. The original receipts now
    # report what happened to their events.
    assert [r.wait(30).status for r in [bad, *behind]] == ["applied"] * 3
    with engine.connect() as conn:
        state = product_state(conn, POISONED)
        assert (state["total_received"], state["reserved"], state["available"]) == (160, 155, 5)
        assert check_invariants(conn).ok

    again = seqproc(clean, "deadletter", "replay", f"product:{POISONED}")  # nothing left: no longer parked
    assert again.returncode == 1
    assert f"product:{POISONED} is not parked" in again.stderr
    assert producer.restock(POISONED, 1).wait(30).status == "applied"  # no longer parked
    with engine.connect() as conn:
        assert product_state(conn, POISONED)["total_received"] == 161  # nothing applied twice
