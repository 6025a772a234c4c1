"""The balance domain on a migrated SQLite file: its rules, its keys, its validation, its CHECK constraints, and the
invariant check that reads them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert, select, text
from sqlalchemy.exc import IntegrityError

import seqproc
from seqproc.domains.balance import ACCOUNTS, MAX_AMOUNT, Deposit, TransferIn, TransferOut, Withdraw
from seqproc.models.errors import InvalidEvent
from seqproc.models.events import Event, parse_event
from seqproc.models.outcomes import Outcome
from seqproc.producer.build import prepare
from seqproc.worker.engine.apply import BatchResult, apply_batch
from seqproc.worker.ops.inspect import check_invariants

APPLIED = Outcome("applied")
INSUFFICIENT = Outcome("rejected", "insufficient_funds")


def sent(*events: Any, key: str | None = None) -> list[Event]:
    """The events as ``seqproc.send`` sends them (keyed, with ids and rising stamps)."""
    return prepare(events, idempotency_keys=[key] * len(events) if key else None)


def apply(engine: Engine, events: Sequence[Event]) -> BatchResult:
    with engine.begin() as conn:
        return apply_batch(conn, 0, events, epoch=None)


def account(engine: Engine, account_id: int) -> tuple[int, int, int] | None:
    """(balance, credited, debited), or None: no such account."""
    with engine.connect() as conn:
        row = conn.execute(
            select(ACCOUNTS.c.balance, ACCOUNTS.c.credited, ACCOUNTS.c.debited).where(
                ACCOUNTS.c.account_id == account_id
            )
        ).first()
    return None if row is None else (row[0], row[1], row[2])


# ------------------------------------------------------------------------------------------------------- rules


def test_a_deposit_creates_the_account(sqlite_engine: Engine) -> None:
    assert account(sqlite_engine, 7) is None
    assert apply(sqlite_engine, sent(Deposit(account_id=7, amount=100))).outcomes == [APPLIED]
    assert account(sqlite_engine, 7) == (100, 100, 0)
    assert apply(sqlite_engine, sent(Deposit(account_id=7, amount=5))).outcomes == [APPLIED]
    assert account(sqlite_engine, 7) == (105, 105, 0)


def test_a_withdrawal_below_zero_is_refused_and_changes_nothing(sqlite_engine: Engine) -> None:
    # No account yet: refused, and no account made for it.
    assert apply(sqlite_engine, sent(Withdraw(account_id=7, amount=1))).outcomes == [INSUFFICIENT]
    assert account(sqlite_engine, 7) is None
    apply(sqlite_engine, sent(Deposit(account_id=7, amount=100)))
    result = apply(sqlite_engine, sent(Withdraw(account_id=7, amount=101), Withdraw(account_id=7, amount=100)))
    assert result.outcomes == [INSUFFICIENT, APPLIED]  # all of it, but not one unit more
    assert (result.applied, result.rejected) == (1, 1)
    assert account(sqlite_engine, 7) == (0, 100, 100)
    assert apply(sqlite_engine, sent(Withdraw(account_id=7, amount=1))).outcomes == [INSUFFICIENT]
    assert account(sqlite_engine, 7) == (0, 100, 100)
    with sqlite_engine.connect() as conn:
        reasons = conn.execute(text("SELECT status, reason FROM idempotency_ledger ORDER BY key")).all()
    assert sorted(reasons, key=repr) == sorted(
        [("rejected", "insufficient_funds")] * 3 + [("applied", None)] * 2, key=repr
    )


def test_rules_run_in_order_within_a_batch(sqlite_engine: Engine) -> None:
    """The one writer of an account sees each event's effect before the next: deposit then withdraw passes, the
    same two the other way round do not."""
    first = apply(sqlite_engine, sent(Withdraw(account_id=1, amount=30), Deposit(account_id=1, amount=30)))
    second = apply(sqlite_engine, sent(Deposit(account_id=2, amount=30), Withdraw(account_id=2, amount=30)))
    assert first.outcomes == [INSUFFICIENT, APPLIED]
    assert second.outcomes == [APPLIED, APPLIED]
    assert (account(sqlite_engine, 1), account(sqlite_engine, 2)) == ((30, 30, 0), (0, 30, 30))


def test_a_transfer_is_keyed_by_its_id(sqlite_engine: Engine) -> None:
    apply(sqlite_engine, sent(Deposit(account_id=1, amount=50)))
    out = sent(TransferOut(account_id=1, amount=30, transfer_id="t-1"))[0]
    assert out.key == "t-1"
    assert apply(sqlite_engine, [out]).outcomes == [APPLIED]
    # Sent again (a new call: new id, new stamp, even another amount): the same transfer, a duplicate.
    again = sent(TransferOut(account_id=1, amount=45, transfer_id="t-1"))[0]
    assert again.id != out.id
    assert apply(sqlite_engine, [again, out]).outcomes == [Outcome("duplicate", first=APPLIED)] * 2
    assert account(sqlite_engine, 1) == (20, 50, 30)
    # Its transfer_in is another event of the same transfer: applied once, to the payee.
    transfer_in = sent(TransferIn(account_id=2, amount=30, transfer_id="t-1"))[0]
    assert apply(sqlite_engine, [transfer_in, transfer_in]).outcomes == [APPLIED, Outcome("duplicate", first=APPLIED)]
    assert account(sqlite_engine, 2) == (30, 30, 0)
    # A refused transfer stays refused when sent again, even once the money is there.
    big = sent(TransferOut(account_id=1, amount=21, transfer_id="t-2"))[0]
    assert apply(sqlite_engine, [big]).outcomes == [INSUFFICIENT]
    apply(sqlite_engine, sent(Deposit(account_id=1, amount=100)))
    assert apply(sqlite_engine, sent(TransferOut(account_id=1, amount=21, transfer_id="t-2"))).outcomes == [
        Outcome("duplicate", first=INSUFFICIENT)
    ]
    assert account(sqlite_engine, 1) == (120, 150, 30)


def test_a_transfer_on_the_wire_carries_its_transfer_id_as_key(sqlite_engine: Engine) -> None:
    """A message made without seqproc's producer (another client, a hand-written one) cannot give a transfer a key
    of its own: with two keys, one transfer would be applied twice."""

    def wire(key: str, n: int) -> dict[str, Any]:
        return {"type": "balance.transfer_out", "key": key, "id": f"x{n}", "stamp": n, "account_id": 1, "amount": 30}

    apply(sqlite_engine, sent(Deposit(account_id=1, amount=100)))
    assert apply(sqlite_engine, [parse_event({**wire("t-1", 1), "transfer_id": "t-1"})]).outcomes == [APPLIED]
    with pytest.raises(InvalidEvent, match=r"^event: key must be 't-1' for this event \(it is derived from"):
        parse_event({**wire("forged", 2), "transfer_id": "t-1"})
    with pytest.raises(InvalidEvent, match="key must be 't-1'"):
        TransferIn(account_id=2, amount=30, transfer_id="t-1", key="forged")
    assert account(sqlite_engine, 1) == (70, 100, 30)


def test_a_request_id_makes_a_retry_a_duplicate(sqlite_engine: Engine) -> None:
    first = apply(sqlite_engine, sent(Deposit(account_id=3, amount=10), key="req-9"))
    retry = apply(sqlite_engine, sent(Deposit(account_id=3, amount=10), key="req-9"))
    without_key = apply(sqlite_engine, sent(Deposit(account_id=3, amount=10)) * 2)  # the same event, resent
    assert first.outcomes == [APPLIED]
    assert retry.outcomes == [Outcome("duplicate", first=APPLIED)]
    assert without_key.outcomes == [APPLIED, Outcome("duplicate", first=APPLIED)]
    # The same request id on a withdrawal names another event (keys are scoped by type).
    assert apply(sqlite_engine, sent(Withdraw(account_id=3, amount=5), key="req-9")).outcomes == [APPLIED]
    assert account(sqlite_engine, 3) == (15, 20, 5)


calls = st.lists(
    st.tuples(st.sampled_from([Deposit, Withdraw, TransferOut, TransferIn]), st.integers(1, 3), st.integers(1, 60)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(calls=calls, sizes=st.lists(st.integers(1, 8), min_size=1, max_size=10))
def test_balance_is_applied_credits_minus_applied_debits(
    sqlite_engine: Engine, clear_sqlite: Any, calls: list[tuple[Any, int, int]], sizes: list[int]
) -> None:
    """Whatever the stream and the batches: each account's balance is the sum of its applied credits minus the sum
    of its applied debits (read from the outcomes), never below zero, and every refusal is insufficient_funds."""
    clear_sqlite()
    with sqlite_engine.begin() as conn:
        conn.execute(ACCOUNTS.delete())
    events = sent(
        *(
            kind(account_id=a, amount=n, transfer_id=f"t{i}")
            if kind in (TransferOut, TransferIn)
            else kind(account_id=a, amount=n)
            for i, (kind, a, n) in enumerate(calls)
        )
    )
    outcomes: list[Outcome] = []
    start, turn = 0, 0
    while start < len(events):
        size = sizes[turn % len(sizes)]
        outcomes += apply(sqlite_engine, events[start : start + size]).outcomes
        start, turn = start + size, turn + 1
    expected: dict[int, tuple[int, int, int]] = {}  # balance, credited, debited, from the outcomes
    for event, outcome in zip(events, outcomes, strict=True):
        balance, credited, debited = expected.get(event.account_id, (0, 0, 0))
        if isinstance(event, Deposit | TransferIn):
            assert outcome == APPLIED
            expected[event.account_id] = (balance + event.amount, credited + event.amount, debited)
        elif event.amount > balance:
            assert outcome == INSUFFICIENT
        else:
            assert outcome == APPLIED
            expected[event.account_id] = (balance - event.amount, credited, debited + event.amount)
    for account_id, totals in expected.items():
        assert account(sqlite_engine, account_id) == totals
    with sqlite_engine.connect() as conn:
        assert check_invariants(conn).ok


# -------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Deposit(account_id=7, amount=0), "amount: must be >= 1 (got 0)"),
        (lambda: Withdraw(account_id=7, amount=-5), "amount: must be >= 1 (got -5)"),
        (
            lambda: Deposit(account_id=7, amount=MAX_AMOUNT + 1),
            f"amount: must be <= {MAX_AMOUNT} (got {MAX_AMOUNT + 1})",
        ),
        (lambda: Deposit(account_id=7, amount="5"), "amount: must be an integer (got '5')"),
        (lambda: Deposit(account_id=0, amount=5), "account_id: must be >= 1 (got 0)"),
        (lambda: Deposit(account_id=7), "amount: is required"),
        (lambda: TransferOut(account_id=7, amount=5, transfer_id=""), "transfer_id: must not be empty (got '')"),
        (lambda: Deposit(account_id=7, amount=5, note="x"), "note: is not a field of this event (got 'x')"),
    ],
)
def test_send_names_the_bad_field(build: Any, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        seqproc.send(build())
    assert str(caught.value) == message
    assert caught.value.field == message.split(":")[0]
    assert isinstance(caught.value, ValueError)


def test_send_refuses_a_key_for_a_transfer() -> None:
    with pytest.raises(
        InvalidEvent, match=r"idempotency_key: must not be given: a balance.transfer_out event is keyed 't-1'"
    ):
        seqproc.send(TransferOut(account_id=7, amount=5, transfer_id="t-1"), idempotency_key="req-1")


def test_send_many_names_the_item_and_field() -> None:
    with pytest.raises(InvalidEvent) as caught:
        seqproc.send_many(
            [
                Deposit(account_id=7, amount=5),
                {"type": "balance.withdraw", "account_id": 7, "amount": 0},
            ]
        )
    assert str(caught.value) == "events[1].amount: must be >= 1 (got 0)"
    with pytest.raises(
        InvalidEvent, match=r"^events\[0\]\.type: must be one of .*balance\.deposit.* \(got 'deposit'\)$"
    ):
        seqproc.send_many([{"type": "deposit", "account_id": 7, "amount": 5}])


# ------------------------------------------------------------------------------------------------- constraints


def insert_row(conn: Connection, **values: int) -> None:
    conn.execute(insert(ACCOUNTS).values(**values))


@pytest.mark.parametrize(
    ("values", "constraint"),
    [
        ({"balance": -1, "credited": 0, "debited": 1}, "balance_non_negative"),
        ({"balance": 5, "credited": 3, "debited": 0}, "balance_is_credits_minus_debits"),
        ({"balance": 0, "credited": 3, "debited": 0}, "balance_is_credits_minus_debits"),
    ],
)
def test_the_database_refuses_a_broken_balance(sqlite_engine: Engine, values: dict[str, int], constraint: str) -> None:
    with pytest.raises(IntegrityError, match=constraint), sqlite_engine.begin() as conn:
        insert_row(conn, account_id=1, **values)
    with sqlite_engine.begin() as conn:
        insert_row(conn, account_id=1, balance=2, credited=5, debited=3)  # a good row is taken
    with pytest.raises(IntegrityError, match=constraint), sqlite_engine.begin() as conn:
        conn.execute(ACCOUNTS.update().where(ACCOUNTS.c.account_id == 1).values(**values))
    assert account(sqlite_engine, 1) == (2, 5, 3)


def test_check_invariants_reads_the_balances(sqlite_engine: Engine) -> None:
    apply(sqlite_engine, sent(Deposit(account_id=1, amount=10), Withdraw(account_id=1, amount=4)))
    with sqlite_engine.connect() as conn:
        report = check_invariants(conn)
    assert report.ok
    assert report.accounts == 1
    # Rows the constraints would refuse (a database restored without them): the check names each.
    with sqlite_engine.begin() as conn:
        conn.execute(text("PRAGMA ignore_check_constraints = ON"))
        insert_row(conn, account_id=2, balance=-3, credited=0, debited=3)
        insert_row(conn, account_id=3, balance=9, credited=10, debited=4)
        conn.execute(text("PRAGMA ignore_check_constraints = OFF"))
    with sqlite_engine.connect() as conn:
        report = check_invariants(conn)
    assert report.accounts == 3
    assert report.violations == [
        "account 2: balance -3 < 0",
        "account 3: balance 9 != credited 10 - debited 4",
    ]
