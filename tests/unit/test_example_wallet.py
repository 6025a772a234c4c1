"""The guide's wallet (``examples/wallet/wallet.py``, included whole in docs/domains.md) under the domain property
harness (``tests/domain_properties.py``), as the guide shows: duplicates, batch boundaries and redelivery of any
stream of deposits and withdrawals end in the balances of applying it once, in order, never below zero."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select

from examples.wallet.wallet import Deposit, Withdraw, metadata, wallet, wallet_account
from tests.domain_properties import PROPERTY_SETTINGS, Call, DomainCase, check_domain, sqlite_database, streams

accounts = st.sampled_from([7, 7, 7, 8])  # a hot account, and another


def withdrawal(account_id: int, amount: int, n: int) -> Withdraw:
    # A withdrawal id names one withdrawal of all: the account is part of it.
    return Withdraw(account_id=account_id, amount=amount, withdrawal_id=f"w-{account_id}-{n}")


def balances(conn: Connection, keys: list[Any]) -> list[tuple[int, int]]:
    query = select(wallet_account.c.account_id, wallet_account.c.balance).where(wallet_account.c.account_id.in_(keys))
    return sorted((row.account_id, row.balance) for row in conn.execute(query))


def negative(conn: Connection) -> list[str]:
    rows = conn.execute(select(wallet_account).where(wallet_account.c.balance < 0))
    return [f"wallet:{row.account_id}: balance {row.balance} < 0" for row in rows]


CASE = DomainCase(
    wallet,
    streams(
        st.one_of(
            st.builds(Deposit, account_id=accounts, amount=st.integers(1, 50)),
            # Sent again with the same withdrawal id (a retry): a duplicate, whatever its amount says.
            st.builds(withdrawal, accounts, st.integers(1, 80), st.integers(1, 3)),
            # A client retrying a deposit with its request id: the second call is a duplicate of the first (a
            # request id names one event, so one account).
            st.builds(
                Call,
                st.builds(Deposit, account_id=st.just(7), amount=st.integers(1, 50)),
                idempotency_key=st.sampled_from(["req-1", "req-2"]),
            ),
        )
    ),
    read_state=balances,
    invariants=negative,
    schema=lambda conn: metadata.create_all(conn),
)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = sqlite_database(tmp_path)
    yield engine
    engine.dispose()


@PROPERTY_SETTINGS
@given(data=st.data())
def test_the_wallet_is_applied_exactly_once_in_order(engine: Engine, data: st.DataObject) -> None:
    check_domain(engine, CASE, data)
