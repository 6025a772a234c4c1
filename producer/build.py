"""Building events from what callers give: validated, keyed and stamped, the same way for every way of sending
(direct, outbox, asyncio, Django). A bad value raises :class:`InvalidEvent` naming the caller's field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from seqproc.models.errors import InvalidEvent
from seqproc.models.events import (
    EVENT_TYPES,
    RESERVATION_TYPES,
    CallerKey,
    Event,
    invalid_event_from,
    parse_event,
    reservation_key,
)
from seqproc.producer.stamps import next_stamp, unique_id

_CALLER_KEY: TypeAdapter[str] = TypeAdapter(CallerKey)

#: The fields each event type takes in ``send_many`` and the CLI (besides ``type``).
FIELDS: dict[str, tuple[str, ...]] = {
    "like": ("article_id", "user_id", "idempotency_key"),
    "unlike": ("article_id", "user_id", "idempotency_key"),
    "reserve": ("product_id", "quantity", "reservation_id"),
    "release": ("product_id", "reservation_id"),
    "commit": ("product_id", "reservation_id"),
    "restock": ("product_id", "quantity", "idempotency_key"),
}


def build_event(event_type: str, fields: Mapping[str, Any]) -> Event:
    """Validate caller input and make the wire event; raise :class:`InvalidEvent` naming the caller's field."""
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("type", f"must be one of {', '.join(EVENT_TYPES)} (got {event_type!r})")
    allowed = FIELDS[event_type]
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidEvent(unknown[0], f"is not a field of a {event_type} event (allowed: {', '.join(allowed)})")
    data = {name: fields[name] for name in allowed if name != "idempotency_key" and name in fields}
    return make_event(event_type, data, idempotency_key=fields.get("idempotency_key"))


def make_event(event_type: str, data: dict[str, Any], *, idempotency_key: Any = None) -> Event:
    """The event of ``event_type`` with the domain fields ``data`` (the calls below pass their arguments as they
    are, :func:`build_event` the checked fields of a mapping): keyed, stamped, validated."""
    event_id = unique_id()
    if event_type in RESERVATION_TYPES:
        rid = data.get("reservation_id")
        if rid is not None:
            check_caller_key("reservation_id", rid)
        # A non-string id fails on its own field below; the placeholder key keeps that the only error.
        key = reservation_key(event_type, rid if isinstance(rid, str) else "")
    elif idempotency_key is None:
        # No key: each call is a new event (like, unlike, like again all count), and the call's own id, unique
        # already, serves as its key. A caller that may retry a request passes its own key (a request id) so
        # that the retry is recognised.
        key = event_id
    else:
        check_caller_key("idempotency_key", idempotency_key)
        key = idempotency_key
    data.update(type=event_type, id=event_id, stamp=next_stamp(), key=key)
    return parse_event(data)


def check_caller_key(field: str, value: Any) -> None:
    """An idempotency key or reservation id as the caller gives it: non-empty, at most 128 characters, no
    control characters. Checked here, under the caller's name for it, before any derived key is made."""
    try:
        _CALLER_KEY.validate_python(value)
    except ValidationError as error:
        raise InvalidEvent(field, str(invalid_event_from(error)).split(": ", 1)[1]) from None


def build_events(events: Iterable[Mapping[str, Any]]) -> list[Event]:
    """Validate every item of a ``send_many`` call (before any is sent or written); the first bad one raises
    :class:`InvalidEvent` naming its index and field (``events[3].quantity: ...``)."""
    built = []
    for index, spec in enumerate(events):
        if not isinstance(spec, Mapping):
            raise InvalidEvent(f"events[{index}]", f"must be a mapping with a 'type' (got {type(spec).__name__})")
        fields = dict(spec)
        event_type = fields.pop("type", None)
        try:
            built.append(build_event(str(event_type) if event_type is not None else "", fields))
        except InvalidEvent as error:
            raise InvalidEvent(f"events[{index}].{error.field}", str(error).split(": ", 1)[1]) from None
    return built


def like_event(article_id: int, user_id: int, *, idempotency_key: str | None = None) -> Event:
    return make_event("like", {"article_id": article_id, "user_id": user_id}, idempotency_key=idempotency_key)


def unlike_event(article_id: int, user_id: int, *, idempotency_key: str | None = None) -> Event:
    return make_event("unlike", {"article_id": article_id, "user_id": user_id}, idempotency_key=idempotency_key)


def reserve_event(product_id: int, quantity: int, *, reservation_id: str) -> Event:
    return make_event("reserve", {"product_id": product_id, "quantity": quantity, "reservation_id": reservation_id})


def release_event(product_id: int, reservation_id: str) -> Event:
    return make_event("release", {"product_id": product_id, "reservation_id": reservation_id})


def commit_event(product_id: int, reservation_id: str) -> Event:
    return make_event("commit", {"product_id": product_id, "reservation_id": reservation_id})


def restock_event(product_id: int, quantity: int, *, idempotency_key: str | None = None) -> Event:
    return make_event("restock", {"product_id": product_id, "quantity": quantity}, idempotency_key=idempotency_key)
