"""The event schemas, shared by the producer (which validates before it sends) and the worker (which validates
again what it receives, since anything can be pushed onto a queue).

Wire form: one JSON object per event, ``{"type": "like", "key": ..., "id": ..., "stamp": ..., <domain fields>}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from seqproc.models.errors import InvalidEvent

#: Longest reservation id or idempotency key a caller may give.
MAX_KEY_LENGTH = 128
#: Ids are PostgreSQL BIGINTs.
MAX_ID = 2**63 - 1
#: Largest quantity one reserve or restock may move: a sane bound that catches unit mix-ups (cents vs units).
MAX_QUANTITY = 1_000_000
#: Event ids are made by the producer (``producer.stamps.unique_id``, about 20 characters); 64 leaves room for
#: callers that bring their own scheme.
MAX_EVENT_ID_LENGTH = 64

EVENT_TYPES = ("like", "unlike", "reserve", "release", "commit", "restock")
#: Events the project sends itself (dead-letter replay, reconcile job), never application code.
CONTROL_TYPES = ("replay", "reconcile")
#: Events whose idempotency key is derived from the reservation id and the action.
RESERVATION_TYPES = ("reserve", "release", "commit")

_NO_CONTROL_CHARS = r"^[^\x00-\x1f\x7f]+$"

Id = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]
Quantity = Annotated[int, Field(strict=True, ge=1, le=MAX_QUANTITY)]
CallerKey = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_KEY_LENGTH, pattern=_NO_CONTROL_CHARS)]
LedgerKey = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_KEY_LENGTH + 16, pattern=_NO_CONTROL_CHARS)]
EventId = Annotated[str, Field(strict=True, min_length=1, max_length=MAX_EVENT_ID_LENGTH, pattern=_NO_CONTROL_CHARS)]
Stamp = Annotated[int, Field(strict=True, ge=1, le=MAX_ID)]


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: Idempotency key: the ledger applies each key once.
    key: LedgerKey
    #: Unique per call: the outcome of this very event is reported under it.
    id: EventId
    #: Ordering stamp from the producer's clock (nanoseconds, strictly increasing per producer process).
    stamp: Stamp

    @property
    def ledger_key(self) -> str:
        """The key the ledger applies once: the caller's key scoped by the event type, so that one request id
        used for a like and for a restock names two events, and no caller key can collide with the derived
        ``reserve:<id>`` keys of reservations."""
        return f"{getattr(self, 'type')}:{self.key}"  # noqa: B009 - ``type`` is declared by each subclass


class Like(_Event):
    """``user_id`` likes ``article_id`` (a repeated like changes nothing)."""

    type: Literal["like"]
    article_id: Id
    user_id: Id

    @property
    def entity_key(self) -> str:
        return f"article:{self.article_id}"


class Unlike(_Event):
    """``user_id`` takes back their like of ``article_id`` (an unlike without a like changes nothing)."""

    type: Literal["unlike"]
    article_id: Id
    user_id: Id

    @property
    def entity_key(self) -> str:
        return f"article:{self.article_id}"


class _ReservationEvent(_Event):
    product_id: Id
    reservation_id: CallerKey

    @property
    def entity_key(self) -> str:
        return f"product:{self.product_id}"

    @property
    def ledger_key(self) -> str:
        # Already scoped: "reserve:<reservation id>".
        return self.key

    @model_validator(mode="after")
    def _key_is_derived(self) -> _ReservationEvent:
        expected = reservation_key(getattr(self, "type"), self.reservation_id)  # noqa: B009
        if self.key != expected:
            raise ValueError(f"key must be {expected!r} for this event (it is derived from the reservation id)")
        return self


class Reserve(_ReservationEvent):
    """Hold ``quantity`` units of ``product_id`` under ``reservation_id``, if that many are available."""

    type: Literal["reserve"]
    quantity: Quantity


class Release(_ReservationEvent):
    """Give a reservation's units back (once); arriving before its reservation, cancel it."""

    type: Literal["release"]


class Commit(_ReservationEvent):
    """Turn an applied reservation into a sale."""

    type: Literal["commit"]


class Restock(_Event):
    """Add ``quantity`` units of ``product_id`` (creating the product on its first restock)."""

    type: Literal["restock"]
    product_id: Id
    quantity: Quantity

    @property
    def entity_key(self) -> str:
        return f"product:{self.product_id}"


EntityKey = Annotated[str, Field(strict=True, pattern=r"^(article|product):[1-9][0-9]{0,18}$")]


class Replay(_Event):
    """Control event, sent by ``seqproc deadletter replay``: apply the dead-lettered events of ``entity`` in their
    order at this point of its partition's stream, then unpark it. Not an event application code can send."""

    type: Literal["replay"]
    entity: EntityKey

    @property
    def entity_key(self) -> str:
        return self.entity


class Reconcile(_Event):
    """Control event, sent by the reconcile job: set the article's like_count to its number of like rows, in the
    partition's own transaction (a fix through the queue never races the worker). Not for application code."""

    type: Literal["reconcile"]
    article_id: Id

    @property
    def entity_key(self) -> str:
        return f"article:{self.article_id}"


Event = Like | Unlike | Reserve | Release | Commit | Restock | Replay | Reconcile
StockEvent = Reserve | Release | Commit | Restock

_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Annotated[Event, Field(discriminator="type")])


_MODELS: dict[str, type[_Event]] = {
    model.model_fields["type"].annotation.__args__[0]: model  # type: ignore[union-attr]  # Literal["like"]
    for model in (Like, Unlike, Reserve, Release, Commit, Restock, Replay, Reconcile)
}


def event_model(event_type: str) -> type[_Event]:
    """The schema of events of ``event_type`` (``KeyError`` for an unknown type)."""
    return _MODELS[event_type]


def reservation_key(event_type: str, reservation_id: str) -> str:
    """The idempotency key of a reserve/release/commit: one of each per reservation."""
    return f"{event_type}:{reservation_id}"


def parse_event(data: Any) -> Event:
    """Validate one event in wire form; raise :class:`InvalidEvent` naming the first bad field."""
    try:
        return _EVENT_ADAPTER.validate_python(data)
    except ValidationError as error:
        raise invalid_event_from(error) from None


def invalid_event_from(error: ValidationError) -> InvalidEvent:
    """Turn pydantic's report into one actionable line: field, rule, value given."""
    issue = error.errors(include_url=False)[0]
    loc = [str(part) for part in issue["loc"] if str(part) not in (*EVENT_TYPES, *CONTROL_TYPES)]
    field = loc[-1] if loc else "event"
    if issue["type"] in ("missing", "union_tag_not_found"):
        return InvalidEvent(field, _rule(issue))
    return InvalidEvent(field, f"{_rule(issue)} (got {_show(issue.get('input'))})")


def _rule(issue: Any) -> str:
    kind = issue["type"]
    ctx = issue.get("ctx") or {}
    rules = {
        "missing": "is required",
        "extra_forbidden": "is not a field of this event",
        "int_type": "must be an integer",
        "string_type": "must be a string",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_pattern_mismatch": "must not contain control characters",
        "union_tag_invalid": f"must be one of {', '.join((*EVENT_TYPES, *CONTROL_TYPES))}",
        "union_tag_not_found": f"is required (one of {', '.join(EVENT_TYPES)})",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
    }
    if kind in rules:
        return rules[kind]
    return str(issue["msg"]).removeprefix("Value error, ")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
