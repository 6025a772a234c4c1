"""Events on the wire, shared by the producer (which validates before it sends) and the worker (which validates
again what it receives, since anything can be pushed onto a queue).

Wire form: one JSON object per event, ``{"type": "like", "key": ..., "id": ..., "stamp": ..., <domain fields>}``.
The schemas are the domains' (``seqproc.models.domain``: ``Domain.event``); this module holds the field types they
share, the one control event of the framework (``replay``), parsing by type, and the one-line error messages.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter, ValidationError

from seqproc.models.domain import Domain, EventModel
from seqproc.models.errors import InvalidEvent
from seqproc.models.fields import (
    LEDGER_KEY_LENGTH,
    MAX_ENTITY_KEY_LENGTH,
    MAX_EVENT_ID_LENGTH,
    MAX_ID,
    MAX_KEY_LENGTH,
    MAX_QUANTITY,
    CallerKey,
    EntityKey,
    EventId,
    Id,
    LedgerKey,
    Quantity,
    Stamp,
)

#: Every event, whatever its domain: a registered :class:`seqproc.models.domain.EventModel`.
Event = EventModel

__all__ = [
    "MAX_EVENT_ID_LENGTH",
    "MAX_ID",
    "MAX_KEY_LENGTH",
    "MAX_QUANTITY",
    "CallerKey",
    "EntityKey",
    "Event",
    "EventId",
    "Id",
    "LedgerKey",
    "Quantity",
    "Replay",
    "Stamp",
    "complete",
    "invalid_event_from",
    "oversized_key",
    "parse_event",
    "readable_event_id",
    "reservation_key",
]


def reservation_key(event_type: str, reservation_id: str) -> str:
    """The idempotency key of a reserve/release/commit: one of each per reservation."""
    return f"{event_type}:{reservation_id}"


def parse_event(data: Any) -> EventModel:
    """Validate one event in wire form against its type's schema; raise :class:`InvalidEvent` naming the first bad
    field. ``key``, ``id`` and ``stamp`` are required on the wire (the producer fills them in)."""
    from seqproc.models.domain import model_of

    if not isinstance(data, dict):
        raise InvalidEvent("event", f"must be an object (got {_show(data)})")
    event_type = data.get("type")
    if event_type is None:
        raise InvalidEvent("type", "is required")
    if not isinstance(event_type, str):
        raise InvalidEvent("type", f"must be a string (got {_show(event_type)})")
    model = model_of(event_type)
    try:
        event = model.model_validate(data)
    except ValidationError as error:
        raise invalid_event_from(error) from None
    return complete(event)


def readable_event_id(data: Any) -> str | None:
    """The ``id`` of an event in wire form if it is one a producer could have made (what a receipt waits on), even
    when the rest of the event is invalid; else None."""
    event_id = data.get("id") if isinstance(data, dict) else None
    if event_id is None:
        return None
    try:
        return _EVENT_ID.validate_python(event_id)
    except ValidationError:
        return None


_EVENT_ID: TypeAdapter[str] = TypeAdapter(EventId)


def complete(event: EventModel) -> EventModel:
    """``event`` if it carries what the wire requires (its key, id and stamp) and its keys fit where seqproc stores
    them (:func:`oversized_key`), else :class:`InvalidEvent`."""
    for name in ("key", "id", "stamp"):
        if getattr(event, name) is None:
            raise InvalidEvent(name, "is required")
    error = oversized_key(event)
    if error is not None:
        raise error
    return event


def oversized_key(event: EventModel, *, key_field: str = "key") -> InvalidEvent | None:
    """The error of an event whose entity key or ledger key is longer than the columns that hold them (the
    dead-letter store and the parked keys; the ledger), else None. Checked by the producer and again by the worker:
    an event whose keys cannot be stored could be neither claimed, nor dead-lettered, nor parked."""
    model = type(event)
    fits = _ALWAYS_FITS.get(model)
    if fits is None:
        fits = _ALWAYS_FITS[model] = _always_fits(model)
    if fits:  # the usual case (integer keys, short type names): no string built per event
        return None
    entity_key = event.entity_key
    if len(entity_key) > MAX_ENTITY_KEY_LENGTH:
        return InvalidEvent(
            type(event).domain.key,
            f"makes an entity key of {len(entity_key)} characters, over {MAX_ENTITY_KEY_LENGTH} "
            f"(got {_show(entity_key)})",
        )
    if event.key is not None and len(event.type) + 1 + len(event.key) > LEDGER_KEY_LENGTH:  # ledger_key's length
        room = LEDGER_KEY_LENGTH - len(event.type) - 1
        return InvalidEvent(
            key_field, f"must be at most {room} characters for a {event.type} event (got {len(event.key)})"
        )
    return None


#: Per event class: True when no event of it can have an oversized key (see :func:`_always_fits`).
_ALWAYS_FITS: dict[type[EventModel], bool] = {}
#: Longest text of an integer key: ``-9223372036854775808``.
_INT_KEY_LENGTH = 20


def _always_fits(model: type[EventModel]) -> bool:
    """True when the class's key field is an integer (a short entity key) and its type name leaves room in the
    ledger for the longest key any event may carry."""
    domain = getattr(model, "domain", None)
    if domain is None:
        return False
    field = model.model_fields.get(domain.key)
    wire_type = model.model_fields["type"].default
    return (
        field is not None
        and field.annotation is int
        and isinstance(wire_type, str)
        and len(domain.entity) + 1 + _INT_KEY_LENGTH <= MAX_ENTITY_KEY_LENGTH
        and len(wire_type) + 1 + MAX_KEY_LENGTH + 16 <= LEDGER_KEY_LENGTH  # LedgerKey's longest
    )


def invalid_event_from(error: ValidationError) -> InvalidEvent:
    """Turn pydantic's report into one actionable line: field, rule, value given."""
    from seqproc.models.domain import event_types

    issue = error.errors(include_url=False)[0]
    types = event_types()
    loc = [str(part) for part in issue["loc"] if str(part) not in types and not isinstance(part, int)]
    field = loc[-1] if loc else "event"
    if issue["type"] in ("missing", "union_tag_not_found"):
        return InvalidEvent(field, _rule(issue))
    return InvalidEvent(field, f"{_rule(issue)} (got {_show(issue.get('input'))})")


def _rule(issue: Any) -> str:
    from seqproc.models.domain import event_types

    kind = issue["type"]
    ctx = issue.get("ctx") or {}
    public = ", ".join(name for name, model in event_types().items() if model.public)
    rules = {
        "missing": "is required",
        "extra_forbidden": "is not a field of this event",
        "int_type": "must be an integer",
        "string_type": "must be a string",
        "greater_than_equal": f"must be >= {ctx.get('ge')}",
        "greater_than": f"must be > {ctx.get('gt')}",
        "less_than_equal": f"must be <= {ctx.get('le')}",
        "less_than": f"must be < {ctx.get('lt')}",
        "string_too_short": "must not be empty",
        "string_too_long": f"must be at most {ctx.get('max_length')} characters",
        "string_pattern_mismatch": "must not contain control characters",
        "union_tag_invalid": f"must be one of {public}",
        "union_tag_not_found": f"is required (one of {public})",
        "literal_error": f"must be {ctx.get('expected')}",
        "model_type": "must be an object",
        "model_attributes_type": "must be an object",
    }
    if kind in rules:
        return rules[kind]
    return str(issue["msg"]).removeprefix("Value error, ")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_FRAMEWORK = Domain("seqproc", key="entity", type_prefix="")


@_FRAMEWORK.event("replay", public=False)
class Replay(EventModel):
    """Control event, sent by ``seqproc deadletter replay``: apply the dead-lettered events of ``entity`` in their
    order at this point of its partition's stream, then unpark it. Not an event application code can send."""

    entity: EntityKey

    @property
    def entity_key(self) -> str:
        return self.entity
