"""The balance domain against PostgreSQL, Redis and a real ``seqproc worker``: racing withdrawals never take an
account below zero, the balance is the applied credits minus the applied debits, and the constraints hold."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

import seqproc
from seqproc.domains.balance import ACCOUNTS, Deposit, TransferIn, TransferOut, Withdraw
from seqproc.models.events import Event
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.worker.ops.inspect import check_invariants
from tests.domain_properties import PROPERTY_SETTINGS, check_domain
from tests.unit.test_domain_properties import BALANCE

pytestmark = pytest.mark.services

ACCOUNT = 42
OPENING = 500


@pytest.fixture
def accounts(clean: Settings) -> Settings:
    """``clean``: no accounts (``account_balance`` is among the tables it empties, derived from the metadata)."""
    return clean


def balance_row(engine: Engine, account_id: int) -> tuple[int, int, int] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(ACCOUNTS.c.balance, ACCOUNTS.c.credited, ACCOUNTS.c.debited).where(
                ACCOUNTS.c.account_id == account_id
            )
        ).first()
    return None if row is None else (row[0], row[1], row[2])


def test_8_threads_racing_on_one_account_never_take_it_below_zero(
    accounts: Settings, start_worker, engine: Engine
) -> None:
    start_worker(accounts)
    assert seqproc.send(Deposit(account_id=ACCOUNT, amount=OPENING)).wait(timeout_s=30) == Outcome("applied")
    threads, per_thread = 8, 250  # 2,000 calls, and about 200 retries
    # Withdrawals outweigh deposits (about 8.5 against 4.7 per call): the account runs dry again and again.
    calls: list[list[tuple[Event, seqproc.Receipt]]] = [[] for _ in range(threads)]
    retries = Counter[int]()

    def run(thread: int) -> None:
        rng = random.Random(thread)
        for n in range(per_thread):
            if rng.random() < 0.45:
                event: Event = Deposit(account_id=ACCOUNT, amount=rng.randint(1, 20))
            else:
                event = Withdraw(account_id=ACCOUNT, amount=rng.randint(1, 30))
            key = f"t{thread}-{n}"  # a request id
            calls[thread].append((event, seqproc.send(event, idempotency_key=key)))
            if rng.random() < 0.1:  # the client retries the request
                calls[thread].append((event, seqproc.send(event, idempotency_key=key)))
                retries[thread] += 1

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(run, range(threads)))
    flat = [call for thread_calls in calls for call in thread_calls]
    outcomes = seqproc.wait_all([receipt for _, receipt in flat], timeout_s=120)

    statuses = Counter(o.status for o in outcomes)
    assert statuses["duplicate"] == sum(retries.values()) > 100
    assert all(o.first is not None and o.first.status != "duplicate" for o in outcomes if o.status == "duplicate")
    credits = OPENING + sum(
        e.amount for (e, _), o in zip(flat, outcomes, strict=True) if o.status == "applied" and isinstance(e, Deposit)
    )
    debits = sum(
        e.amount for (e, _), o in zip(flat, outcomes, strict=True) if o.status == "applied" and isinstance(e, Withdraw)
    )
    refused = [(e, o) for (e, _), o in zip(flat, outcomes, strict=True) if o.status == "rejected"]
    assert {o.reason for _, o in refused} == {"insufficient_funds"}
    assert all(isinstance(e, Withdraw) for e, _ in refused)
    assert len(refused) > 100  # the race was real: the account ran dry many times
    assert statuses["applied"] + len(refused) == threads * per_thread

    # No commit ever took it below zero: the table's CHECK refuses one (test_postgresql_refuses_a_broken_balance).
    assert balance_row(engine, ACCOUNT) == (credits - debits, credits, debits)
    with engine.connect() as conn:
        ledger = table_of(LedgerEntry)
        recorded = conn.execute(
            select(func.count()).select_from(ledger).where(ledger.c.reason == "insufficient_funds")
        ).scalar_one()
        assert recorded == len(refused)
        report = check_invariants(conn)
    assert report.ok, report.violations
    assert report.accounts == 1
    print(  # the figures of the run, for the log (pytest -s)
        f"BALANCE calls={threads * per_thread} retries={sum(retries.values())} applied={statuses['applied']} "
        f"insufficient_funds={len(refused)} credits={credits} debits={debits} balance={credits - debits}"
    )


def test_a_transfer_between_two_accounts(accounts: Settings, start_worker, engine: Engine) -> None:
    start_worker(accounts)
    assert seqproc.send(Deposit(account_id=1, amount=100)).wait(timeout_s=30).status == "applied"
    out = seqproc.send(TransferOut(account_id=1, amount=70, transfer_id="t-1"))
    assert out.wait(timeout_s=30) == Outcome("applied")
    assert seqproc.send(TransferIn(account_id=2, amount=70, transfer_id="t-1")).wait(timeout_s=30) == Outcome("applied")
    # Sent again by a retrying caller: the same transfer.
    again = seqproc.send(TransferOut(account_id=1, amount=70, transfer_id="t-1")).wait(timeout_s=30)
    assert again == Outcome("duplicate", first=Outcome("applied"))
    # More than is left: refused, so the caller sends no transfer_in.
    refused = seqproc.send(TransferOut(account_id=1, amount=31, transfer_id="t-2")).wait(timeout_s=30)
    assert refused == Outcome("rejected", "insufficient_funds")
    assert (balance_row(engine, 1), balance_row(engine, 2)) == ((30, 100, 70), (70, 70, 0))


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ({"balance": -1, "credited": 0, "debited": 1}, "balance_non_negative"),
        ({"balance": 5, "credited": 3, "debited": 0}, "balance_is_credits_minus_debits"),
    ],
)
def test_postgresql_refuses_a_broken_balance(
    accounts: Settings, engine: Engine, values: dict[str, int], constraint: str
) -> None:
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(insert(ACCOUNTS).values(account_id=1, **values))
    with engine.begin() as conn:
        conn.execute(insert(ACCOUNTS).values(account_id=1, balance=2, credited=5, debited=3))
    with pytest.raises(IntegrityError, match=constraint), engine.begin() as conn:
        conn.execute(ACCOUNTS.update().where(ACCOUNTS.c.account_id == 1).values(**values))
    assert balance_row(engine, 1) == (2, 5, 3)


@settings(PROPERTY_SETTINGS, max_examples=15)
@given(data=st.data())
def test_domain_properties_on_postgresql(engine: Engine, data: st.DataObject) -> None:
    """The harness of the unit suite, on PostgreSQL: the domain's statements and the PostgreSQL store (it empties
    the tables itself)."""
    check_domain(engine, BALANCE, data)
