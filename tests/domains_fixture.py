"""A user domain for the tests (``tally``), loaded by their workers through ``SEQPROC_DOMAINS=tests.domains_fixture``.

``tally.add`` adds ``amount`` to a tally and logs its ``label``: ``fixture_tally_log`` holds every applied event of a
tally, in the order they were applied, so a test reads order and exactly-once straight from it. Two switches make
the domain fail the way a user's domain can, for the parking tests:

- a row in ``fixture_poison`` makes ``apply`` raise for that tally (a bug in the rule);
- a CHECK added to ``fixture_tally`` (:func:`cap_totals`) makes ``save`` break a constraint.

The tables are the test's own (:func:`create_tables` / :func:`drop_tables`), as a user's domain owns its tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, PositiveInt
from sqlalchemy import bindparam, text

import seqproc

TABLES = ("fixture_tally_log", "fixture_tally", "fixture_poison")
CREATE = (
    "CREATE TABLE fixture_tally (tally_id bigint PRIMARY KEY, total bigint NOT NULL)",
    "CREATE TABLE fixture_tally_log (id bigserial PRIMARY KEY, tally_id bigint NOT NULL, label text NOT NULL, "
    "amount bigint NOT NULL)",
    "CREATE TABLE fixture_poison (tally_id bigint PRIMARY KEY)",
)
CAP = "fixture_tally_cap"

tally = seqproc.Domain("tally", key="tally_id")


@tally.event("add")
class Add(seqproc.EventModel):
    tally_id: PositiveInt
    amount: PositiveInt
    label: str = Field(min_length=1, max_length=40)


@dataclass
class Tally:
    total: int
    poisoned: bool
    #: (label, amount) of the events applied in this batch, in order.
    added: list[tuple[str, int]] = field(default_factory=list)


SELECT_TOTALS = text("SELECT tally_id, total FROM fixture_tally WHERE tally_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
SELECT_POISONED = text("SELECT tally_id FROM fixture_poison WHERE tally_id IN :ids").bindparams(
    bindparam("ids", expanding=True)
)
UPSERT_TOTAL = text(
    "INSERT INTO fixture_tally (tally_id, total) VALUES (:tally_id, :total) "
    "ON CONFLICT (tally_id) DO UPDATE SET total = EXCLUDED.total"
)
LOG = text("INSERT INTO fixture_tally_log (tally_id, label, amount) VALUES (:tally_id, :label, :amount)")


@tally.load
def load(conn: Any, keys: list[int]) -> dict[int, Tally]:
    totals = dict(conn.execute(SELECT_TOTALS, {"ids": keys}).all())
    poisoned = {row[0] for row in conn.execute(SELECT_POISONED, {"ids": keys})}
    return {key: Tally(totals.get(key, 0), key in poisoned) for key in keys}


@tally.apply
def apply(state: Tally, event: Add) -> seqproc.Applied | seqproc.Rejected:
    if state.poisoned:
        raise RuntimeError(f"tally {event.tally_id} is poisoned (a bug in the rule, switched on by the test)")
    state.total += event.amount
    state.added.append((event.label, event.amount))
    return seqproc.Applied()


@tally.save
def save(conn: Any, changed: dict[int, Tally]) -> None:
    conn.execute(UPSERT_TOTAL, [{"tally_id": key, "total": state.total} for key, state in changed.items()])
    log = [
        {"tally_id": key, "label": label, "amount": amount}
        for key, state in changed.items()
        for label, amount in state.added
    ]
    conn.execute(LOG, log)


def create_tables(conn: Any) -> None:
    drop_tables(conn)
    for statement in CREATE:
        conn.execute(text(statement))


def drop_tables(conn: Any) -> None:
    for table in TABLES:
        conn.execute(text(f"DROP TABLE IF EXISTS {table}"))


def cap_totals(conn: Any, limit: int) -> None:
    """From now on ``save`` breaks a constraint for any tally whose total would pass ``limit``."""
    conn.execute(text(f"ALTER TABLE fixture_tally ADD CONSTRAINT {CAP} CHECK (total <= {int(limit)})"))


def uncap_totals(conn: Any) -> None:
    conn.execute(text(f"ALTER TABLE fixture_tally DROP CONSTRAINT IF EXISTS {CAP}"))


def poison(conn: Any, tally_id: int) -> None:
    conn.execute(text("INSERT INTO fixture_poison (tally_id) VALUES (:id) ON CONFLICT DO NOTHING"), {"id": tally_id})


def cure(conn: Any, tally_id: int) -> None:
    conn.execute(text("DELETE FROM fixture_poison WHERE tally_id = :id"), {"id": tally_id})


def applied_labels(conn: Any, tally_id: int) -> list[str]:
    """The labels of the tally's applied events, in the order they were applied."""
    rows = conn.execute(text("SELECT label FROM fixture_tally_log WHERE tally_id = :id ORDER BY id"), {"id": tally_id})
    return [row[0] for row in rows]


def total(conn: Any, tally_id: int) -> int | None:
    return conn.execute(text("SELECT total FROM fixture_tally WHERE tally_id = :id"), {"id": tally_id}).scalar()
