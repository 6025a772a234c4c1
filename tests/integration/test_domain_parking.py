"""A user domain that fails (its ``apply`` raises, or its ``save`` breaks a constraint) parks the failing key: that
event and every later one of its key are dead-lettered in order, the other keys of the partition flow on, and
``seqproc deadletter replay`` applies them exactly once, in order, once the cause is fixed.

The domain is ``tests/domains_fixture.py`` (``tally``), loaded by the worker through ``SEQPROC_DOMAINS``; its log
table records every applied event in the order applied, so order and exactly-once are read straight from it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, text

import seqproc
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for
from tests import domains_fixture as fixture
from tests.conftest import ROOT, WorkerProcess, settings_env

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

DOMAINS = "tests.domains_fixture"
A = 1  # the tally that fails


def same_partition_as(tally_id: int, partitions: int) -> int:
    """Another tally on the partition of ``tally_id``: parking must not block its neighbours."""
    home = partition_for(f"tally:{tally_id}", partitions)
    return next(t for t in range(tally_id + 1, tally_id + 10_000) if partition_for(f"tally:{t}", partitions) == home)


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "seqproc", *args],
        cwd=ROOT,
        env=settings_env(settings, SEQPROC_DOMAINS=DOMAINS),
        capture_output=True,
        text=True,
        timeout=120,
    )


def add(tally_id: int, amount: int, label: str) -> seqproc.Receipt:
    return seqproc.send(fixture.Add(tally_id=tally_id, amount=amount, label=label), idempotency_key=label)


def status(receipt: seqproc.Receipt) -> tuple[str, str | None]:
    outcome = receipt.wait(30)
    return outcome.status, outcome.reason


@pytest.fixture
def tally_tables(engine: Engine) -> Iterator[None]:
    with engine.begin() as conn:
        fixture.create_tables(conn)
    yield
    with engine.begin() as conn:
        fixture.drop_tables(conn)


#: Each way a domain fails: what breaks it for tally A (after a first event of A of 60 was applied, so that the
#: next one of 60 fails), what fixes it, and what the dead letter's error names.
FAILURES: dict[str, tuple[Callable[[Any], None], Callable[[Any], None], str]] = {
    "apply_raises": (lambda conn: fixture.poison(conn, A), lambda conn: fixture.cure(conn, A), "is poisoned"),
    "save_breaks_a_constraint": (lambda conn: fixture.cap_totals(conn, 100), fixture.uncap_totals, fixture.CAP),
}


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_a_failing_domain_parks_its_key_and_replay_applies_its_events_once_in_order(
    failure: str,
    clean: Settings,
    engine: Engine,
    tally_tables: None,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    break_it, fix_it, cause = FAILURES[failure]
    b = same_partition_as(A, clean.partitions)
    worker = start_worker(clean, SEQPROC_DOMAINS=DOMAINS)
    assert status(add(A, 60, "a1")) == ("applied", None)
    with engine.begin() as conn:
        break_it(conn)

    # One message for the partition (A and B share it): the batch fails, is redone one event at a time; a2 fails
    # for good and parks A, a3 and a4 follow it into the dead-letter store, B's events are applied between them.
    batch = seqproc.send_many(
        [
            {"type": "tally.add", "tally_id": tally_id, "amount": amount, "label": label, "idempotency_key": label}
            for tally_id, amount, label in [(A, 60, "a2"), (b, 1, "b1"), (A, 1, "a3"), (b, 1, "b2"), (A, 1, "a4")]
        ]
    )
    assert len({r.queue for r in batch}) == 1
    assert [status(r) for r in batch] == [
        ("rejected", "dead_lettered"),
        ("applied", None),
        ("rejected", "parked"),
        ("applied", None),
        ("rejected", "parked"),
    ]
    # While A is parked: its new events wait behind the others, B's flow.
    a5, b3 = add(A, 1, "a5"), add(b, 1, "b3")
    assert (status(a5), status(b3)) == (("rejected", "parked"), ("applied", None))
    a2, a3, a4 = batch[0], batch[2], batch[4]

    listed = json.loads(cli(clean, "deadletter", "list", "--key", f"tally:{A}", "--json").stdout)
    assert [d["event_key"] for d in listed["dead_letters"]] == ["a2", "a3", "a4", "a5"]
    assert cause in listed["dead_letters"][0]["error"]
    assert all("is parked" in d["error"] for d in listed["dead_letters"][1:])
    assert [p["entity_key"] for p in listed["parked_keys"]] == [f"tally:{A}"]
    with engine.connect() as conn:
        assert fixture.applied_labels(conn, A) == ["a1"]
        assert fixture.applied_labels(conn, b) == ["b1", "b2", "b3"]

    # A replay before the fix fails again: nothing is applied, nothing lost or added, A stays parked.
    early = cli(clean, "deadletter", "replay", f"tally:{A}")
    assert early.returncode == 0, early.stderr
    assert "rejected (replay_failed)" in early.stdout
    assert json.loads(cli(clean, "deadletter", "list", "--key", f"tally:{A}", "--json").stdout) == listed
    with engine.connect() as conn:
        assert fixture.applied_labels(conn, A) == ["a1"]

    with engine.begin() as conn:
        fix_it(conn)
    replayed = cli(clean, "deadletter", "replay", f"tally:{A}")
    assert replayed.returncode == 0, replayed.stderr
    assert "applied (replayed 4)" in replayed.stdout
    # The original receipts now report what happened to their events.
    assert [status(r) for r in (a2, a3, a4, a5)] == [("applied", None)] * 4
    with engine.connect() as conn:
        assert fixture.applied_labels(conn, A) == ["a1", "a2", "a3", "a4", "a5"]
        assert fixture.total(conn, A) == 60 + 60 + 1 + 1 + 1
        assert fixture.applied_labels(conn, b) == ["b1", "b2", "b3"]
        assert fixture.total(conn, b) == 3

    # Exactly once from here on: a resend is a duplicate, A is no longer parked (a second replay is refused).
    again = add(A, 60, "a2").wait(30)
    assert (again.status, again.first and again.first.status) == ("duplicate", "applied")
    second = cli(clean, "deadletter", "replay", f"tally:{A}")
    assert (second.returncode, second.stdout) == (1, "")
    assert f"tally:{A} is not parked" in second.stderr
    assert status(add(A, 1, "a6")) == ("applied", None)
    with engine.connect() as conn:
        assert fixture.applied_labels(conn, A) == ["a1", "a2", "a3", "a4", "a5", "a6"]
        ledger = dict(
            conn.execute(text("SELECT key, status FROM idempotency_ledger WHERE event_type = 'tally.add'")).all()
        )
    labels = ["a1", "a2", "a3", "a4", "a5", "a6", "b1", "b2", "b3"]
    assert ledger == {f"tally.add:{label}": "applied" for label in labels}
    assert json.loads(cli(clean, "deadletter", "list", "--json").stdout) == {"dead_letters": [], "parked_keys": []}
    assert worker.process.poll() is None
