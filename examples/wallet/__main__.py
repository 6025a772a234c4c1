"""``python -m examples.wallet``: create the wallet's table, send a few events, print their outcomes and the balance.

A worker that knows the domain must run: ``SEQPROC_DOMAINS=examples.wallet.wallet python -m seqproc worker``. Run
this twice: the second time every event is a duplicate and the balance stays as it was.
"""

from __future__ import annotations

from sqlalchemy import create_engine, select

import seqproc
from examples.wallet.wallet import Deposit, Withdraw, metadata, wallet_account
from seqproc.models.settings import get_settings


def main() -> None:
    engine = create_engine(get_settings().database_url)
    metadata.create_all(engine)  # stands in for your migrations
    receipts = [
        seqproc.send(Deposit(account_id=7, amount=100), idempotency_key="req-1"),
        seqproc.send(Deposit(account_id=7, amount=100), idempotency_key="req-1"),  # a retry: a duplicate
        seqproc.send(Withdraw(account_id=7, amount=30, withdrawal_id="w-1")),
        seqproc.send(Withdraw(account_id=7, amount=500, withdrawal_id="w-2")),  # more than the balance
    ]
    for receipt, outcome in zip(receipts, seqproc.wait_all(receipts, timeout_s=30), strict=True):
        print(receipt.event_type, receipt.idempotency_key, outcome.status, outcome.reason or "-")
    with engine.connect() as conn:
        balance = conn.execute(select(wallet_account.c.balance).where(wallet_account.c.account_id == 7)).scalar()
    print("wallet:7 balance", balance)
    engine.dispose()


if __name__ == "__main__":
    main()
