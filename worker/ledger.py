"""The idempotency ledger: claim keys with ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` (never check-then-insert),
look up the first outcome of keys seen before, record the outcome of new ones; all in the apply transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, select, update

from models.base import table_of
from models.ledger import LedgerEntry
from models.outcomes import Outcome, Status
from worker.sql import upsert

LEDGER = table_of(LedgerEntry)


def claim(conn: Connection, partition: int, keys: Sequence[tuple[str, str]]) -> set[str]:
    """Insert ``(key, event_type)`` pairs; return the keys that were new. Keys already present are duplicates.

    Under the partition's single writer nothing races this, and if something did (a key sent to two partitions),
    the unique key still decides: exactly one transaction gets the row.
    """
    if not keys:
        return set()
    stmt = upsert(conn, LEDGER).on_conflict_do_nothing(index_elements=[LEDGER.c.key]).returning(LEDGER.c.key)
    rows = conn.execute(stmt, [{"key": key, "partition": partition, "event_type": kind} for key, kind in keys])
    return {row[0] for row in rows}


def first_outcomes(conn: Connection, keys: Sequence[str]) -> dict[str, Outcome]:
    """The recorded outcome of each of ``keys`` that the ledger holds."""
    if not keys:
        return {}
    rows = conn.execute(select(LEDGER.c.key, LEDGER.c.status, LEDGER.c.reason).where(LEDGER.c.key.in_(list(keys))))
    found = {}
    for key, status, reason in rows:
        found[key] = Outcome(_status(status), reason)
    return found


def _status(value: str | None) -> Status:
    if value in ("applied", "rejected"):
        return value  # type: ignore[return-value]
    # Only a database edited by hand has a key without an outcome; it still counts as applied once.
    return "applied"


def record(conn: Connection, outcomes: Sequence[tuple[str, Outcome]]) -> None:
    """Store the outcome of each newly claimed key."""
    if not outcomes:
        return
    conn.execute(
        update(LEDGER).where(LEDGER.c.key == bindparam("k")).values(status=bindparam("s"), reason=bindparam("r")),
        [{"k": key, "s": outcome.status, "r": outcome.reason} for key, outcome in outcomes],
    )
