"""Field types that event schemas share: ids, quantities, keys, stamps, with the limits they enforce."""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import Field

#: Longest reservation id or idempotency key a caller may give.
MAX_KEY_LENGTH = 128
#: Ids are PostgreSQL BIGINTs.
MAX_ID = 2**63 - 1
#: Largest quantity one reserve or restock may move: a sane bound that catches unit mix-ups (cents vs units).
MAX_QUANTITY = 1_000_000
#: Longest entity key (``<entity>:<key value>``, ``wallet:7``): the dead-letter store and the parked keys hold it.
MAX_ENTITY_KEY_LENGTH = 64
#: Longest reason of an outcome (``insufficient_funds``): the ledger holds it, metrics label with it.
MAX_REASON_LENGTH = 64
#: Event ids are made by the producer (``models.stamps.unique_id``, about 20 characters); 64 leaves room for
#: callers that bring their own scheme.
MAX_EVENT_ID_LENGTH = 64

#: Longest key in the idempotency ledger: room for a 128-character caller key plus the ``reserve:``-style prefix of
#: reservation keys.
LEDGER_KEY_LENGTH = 160

_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"

Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
CallerKey = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_KEY_LENGTH, pattern=_NO_CONTROL_CHARS)]
LedgerKey = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_KEY_LENGTH + 16, pattern=_NO_CONTROL_CHARS)]
EventId = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_EVENT_ID_LENGTH, pattern=_NO_CONTROL_CHARS)]
Stamp = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
#: A notification topic (``notify="user:42"``): named like an entity key, ``<letters, digits, - or _>:<anything>``.
Topic = Annotated[str, Field(strict=True, min_length=3, max_length=200, pattern=r"^[A-Za-z0-9_-]+:[^\x00-\x1f\x7f]+$")]
#: ``notify_on="rejected"``: notify only rejections and dead letters (None: every outcome).
NotifyOn = Literal["rejected"]
#: An entity key as ``seqproc deadletter replay`` takes it: ``<entity>:<key>`` (``article:42``, ``wallet:7``).
EntityKey = Annotated[
    str, Field(strict=True, min_length=3, max_length=200, pattern=r"^[A-Za-z0-9_-]+:[^\x00-\x1f\x7f]+$")
]


class ReservationStatus(enum.StrEnum):
    """Where a reservation stands (the stock domain's rules and its ``reservation`` table both use it)."""

    ACTIVE = "active"
    RELEASED = "released"
    COMMITTED = "committed"
    #: The release arrived before the reservation: the reservation, when it comes, is not applied.
    CANCELLED = "cancelled"
    #: The reservation was refused (not enough stock); it holds nothing.
    REJECTED = "rejected"
