"""The balance domain's SQL (its ``account_balance`` table): loaded by the worker's first batch, never by a producer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from seqproc.models.db import upsert
from seqproc.models.tables.balance import AccountBalance
from seqproc.models.tables.base import table_of

if TYPE_CHECKING:
    from seqproc.domains.balance import Account

ACCOUNTS = table_of(AccountBalance)


def load(conn: Any, keys: Sequence[int]) -> dict[int, Account]:
    """The accounts of ``keys`` that exist."""
    from seqproc.domains.balance import Account

    rows = conn.execute(
        select(ACCOUNTS.c.account_id, ACCOUNTS.c.balance, ACCOUNTS.c.credited, ACCOUNTS.c.debited).where(
            ACCOUNTS.c.account_id.in_(list(keys))
        )
    )
    return {row[0]: Account(*row) for row in rows}


def save(conn: Any, changed: dict[int, Account]) -> None:
    # One writer per account: the new totals are written as they are (the CHECK constraints still judge them).
    stmt = upsert(conn, ACCOUNTS)
    stmt = stmt.on_conflict_do_update(
        index_elements=[ACCOUNTS.c.account_id],
        set_={
            "balance": stmt.excluded.balance,
            "credited": stmt.excluded.credited,
            "debited": stmt.excluded.debited,
            "updated_at": func.now(),
        },
    )
    conn.execute(
        stmt,
        [
            {"account_id": a.account_id, "balance": a.balance, "credited": a.credited, "debited": a.debited}
            for a in changed.values()
        ],
    )
