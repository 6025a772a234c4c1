"""Balance, keyed by account: deposits, withdrawals and transfers, never below zero.

The bank example of the posts: two withdrawals racing on one account would both pass a check-then-write; here the
account's events are applied one after another by its one writer, so a withdrawal that would take the balance below
zero is rejected with reason ``insufficient_funds`` and changes nothing. Invariant, also as database constraints:
``balance == credited - debited`` (applied credits minus applied debits) and ``balance >= 0``.

A transfer is two events on two accounts (on two partitions, perhaps): send ``transfer_out`` from the payer, and
once it is applied, ``transfer_in`` to the payee; each is keyed by the transfer id, so each happens once. A refused
``transfer_out`` (``insufficient_funds``) means no money left: send no ``transfer_in``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import Field, model_validator

from seqproc.models.domain import Applied, Domain, EventModel, Rejected
from seqproc.models.fields import CallerKey, Id

#: Largest amount one event moves (in the account's smallest unit): catches unit mix-ups; far below BIGINT.
MAX_AMOUNT = 10**15
Amount = Annotated[int, Field(strict=True, ge=1, le=MAX_AMOUNT)]

domain = Domain("balance", key="account_id", entity="account")


@domain.event("deposit")
class Deposit(EventModel):
    """Credit ``amount`` to ``account_id`` (creating the account on its first credit)."""

    account_id: Id
    amount: Amount


@domain.event("withdraw")
class Withdraw(EventModel):
    """Debit ``amount`` from ``account_id``; rejected (``insufficient_funds``) if the balance is lower."""

    account_id: Id
    amount: Amount


class _Transfer(EventModel):
    account_id: Id
    amount: Amount
    transfer_id: CallerKey

    def derived_key(self) -> str | None:
        # One transfer_out and one transfer_in per transfer, whoever sends them how many times.
        return self.transfer_id

    @model_validator(mode="after")
    def _key_is_derived(self) -> _Transfer:
        # On the wire too: a message from another client must not give a transfer a key of its own, or the same
        # transfer sent with two keys would move the money twice.
        if self.key is not None and self.key != self.transfer_id:
            raise ValueError(f"key must be {self.transfer_id!r} for this event (it is derived from the transfer id)")
        return self


@domain.event("transfer_out")
class TransferOut(_Transfer):
    """Debit ``amount`` from the payer ``account_id`` for ``transfer_id``; rejected (``insufficient_funds``) if the
    balance is lower."""


@domain.event("transfer_in")
class TransferIn(_Transfer):
    """Credit ``amount`` to the payee ``account_id`` for ``transfer_id`` (after its ``transfer_out`` applied)."""


CREDITS = (Deposit, TransferIn)


@dataclass
class Account:
    account_id: int
    balance: int = 0
    credited: int = 0
    debited: int = 0


@domain.load
def load(conn: Any, keys: Sequence[int]) -> dict[int, Account]:
    from seqproc.domains import balance_store  # the SQL and its table: loaded by workers, not producers

    found = balance_store.load(conn, keys)
    return {key: found.get(key, Account(key)) for key in keys}


@domain.apply
def apply(account: Account, event: EventModel) -> Applied | Rejected:
    amount: int = event.amount  # type: ignore[attr-defined]  # every balance event has one
    if isinstance(event, CREDITS):
        account.balance += amount
        account.credited += amount
        return Applied()
    if account.balance < amount:
        return Rejected("insufficient_funds")
    account.balance -= amount
    account.debited += amount
    return Applied()


@domain.save
def save(conn: Any, changed: dict[int, Account]) -> None:
    from seqproc.domains import balance_store

    balance_store.save(conn, changed)


def __getattr__(name: str) -> Any:
    """``ACCOUNTS``, the ``account_balance`` table, loaded on first use (a producer never needs it)."""
    if name == "ACCOUNTS":
        from seqproc.domains.balance_store import ACCOUNTS

        return ACCOUNTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Account", "Deposit", "TransferIn", "TransferOut", "Withdraw", "domain"]
