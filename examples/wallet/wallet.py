"""A wallet: deposits and withdrawals, applied in order by one writer per account, never below zero.

The example of docs/domains.md ("Write your own domain"), which includes this file whole. From the repository root,
with PostgreSQL and Redis up and `seqproc migrate` done:

    SEQPROC_DOMAINS=examples.wallet.wallet python -m seqproc worker &     # the worker imports this module
    python -m examples.wallet      # creates the table, sends a few events, prints their outcomes (__main__.py)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, PositiveInt
from sqlalchemy import BigInteger, CheckConstraint, Column, MetaData, Table, select
from sqlalchemy.dialects import postgresql, sqlite

import seqproc

# The application's own table, in the database the workers write (SEQPROC_DATABASE_URL): `save` runs in the
# worker's transaction. Your migrations create it (here: `metadata.create_all`, in __main__.py).
metadata = MetaData()
wallet_account = Table(
    "wallet_account",
    metadata,
    Column("account_id", BigInteger, primary_key=True),
    Column("balance", BigInteger, CheckConstraint("balance >= 0"), nullable=False),
)

wallet = seqproc.Domain("wallet", key="account_id")  # entity keys "wallet:<account_id>", types "wallet.<event>"


@wallet.event("deposit")
class Deposit(seqproc.EventModel):
    account_id: PositiveInt
    amount: PositiveInt


@wallet.event("withdraw")
class Withdraw(seqproc.EventModel):
    account_id: PositiveInt
    amount: PositiveInt
    withdrawal_id: str = Field(min_length=1, max_length=100)

    def derived_key(self) -> str:
        return self.withdrawal_id  # one withdrawal per id, however many times it is sent


@dataclass
class Account:
    balance: int = 0


@wallet.load  # once per batch, in the worker's transaction: a state for every key given
def load(conn: Any, keys: list[int]) -> dict[int, Account]:
    rows = conn.execute(select(wallet_account).where(wallet_account.c.account_id.in_(keys)))
    found = {row.account_id: row.balance for row in rows}
    return {key: Account(found.get(key, 0)) for key in keys}


@wallet.apply  # once per event, in order, in memory
def apply(account: Account, event: Deposit | Withdraw) -> seqproc.Applied | seqproc.Rejected:
    if isinstance(event, Deposit):
        account.balance += event.amount
        return seqproc.Applied()
    if account.balance < event.amount:
        return seqproc.Rejected("insufficient_funds")  # the state is left as it was
    account.balance -= event.amount
    return seqproc.Applied()


@wallet.save  # once per batch, in the worker's transaction: the accounts an applied event changed
def save(conn: Any, changed: dict[int, Account]) -> None:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert  # SQLite: the unit tests
    upsert = insert(wallet_account)
    conn.execute(
        upsert.on_conflict_do_update(index_elements=["account_id"], set_={"balance": upsert.excluded.balance}),
        [{"account_id": key, "balance": account.balance} for key, account in changed.items()],
    )
