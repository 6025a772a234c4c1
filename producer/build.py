"""Building events from what callers give: validated, keyed and stamped, the same way for every way of sending
(direct, outbox, asyncio, Django) and every domain. A bad value raises :class:`InvalidEvent` naming the field."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from seqproc.models.domain import RESERVED_FIELDS, EventModel, event_types, model_of
from seqproc.models.errors import InvalidEvent
from seqproc.models.events import Event, invalid_event_from, oversized_key
from seqproc.models.fields import CallerKey, LedgerKey, NotifyOn, Topic
from seqproc.models.stamps import next_stamp, unique_id

_CALLER_KEY: TypeAdapter[str] = TypeAdapter(CallerKey)
_LEDGER_KEY: TypeAdapter[str] = TypeAdapter(LedgerKey)
_TOPIC: TypeAdapter[str] = TypeAdapter(Topic)
_NOTIFY_ON: TypeAdapter[str] = TypeAdapter(NotifyOn)


def notice(notify: Any, notify_on: Any) -> dict[str, Any]:
    """The wire fields of ``notify=`` and ``notify_on=`` as a caller gives them (none when ``notify`` is None),
    validated: a topic is named like an entity key (``user:42``); ``notify_on`` is ``"rejected"`` or None."""
    if notify is None:
        if notify_on is not None:
            raise InvalidEvent("notify_on", "needs notify=<topic> (the topic to publish to)")
        return {}
    for field, adapter, value in (("notify", _TOPIC, notify), ("notify_on", _NOTIFY_ON, notify_on)):
        if value is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as error:
            raise InvalidEvent(field, str(invalid_event_from(error)).split(": ", 1)[1]) from None
    return {"notify": notify} if notify_on is None else {"notify": notify, "notify_on": notify_on}


def derives_key(model: type[EventModel]) -> bool:
    """True for events whose idempotency key follows from their fields (a reservation's ``reserve:<id>``)."""
    return model.derived_key is not EventModel.derived_key


def fields_of(event_type: str) -> tuple[str, ...]:
    """The fields an event of ``event_type`` takes from a caller, in the schema's order, then ``idempotency_key``
    (unless its key follows from its fields)."""
    model = model_of(event_type)
    own = tuple(name for name in model.model_fields if name not in RESERVED_FIELDS)
    return own if derives_key(model) else (*own, "idempotency_key")


def public_types() -> list[str]:
    """The event types application code may send (the control events are the framework's and the jobs')."""
    return [name for name, model in event_types().items() if model.public]


def build_event(event_type: str, fields: Mapping[str, Any], *, notified: Mapping[str, Any] | None = None) -> Event:
    """Validate caller input (``send_many`` items, the CLI) and make the wire event; raise :class:`InvalidEvent`
    naming the caller's field."""
    model = model_of(event_type)
    if not model.public:
        raise InvalidEvent("type", f"{event_type!r} is sent by seqproc itself, not by application code")
    allowed = fields_of(event_type)
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        raise InvalidEvent(unknown[0], f"is not a field of a {event_type} event (allowed: {', '.join(allowed)})")
    data = {name: fields[name] for name in allowed if name != "idempotency_key" and name in fields}
    return make_event(event_type, data, idempotency_key=fields.get("idempotency_key"), notified=notified)


def make_event(
    event_type: str,
    data: dict[str, Any],
    *,
    idempotency_key: Any = None,
    notify: Any = None,
    notify_on: Any = None,
    notified: Mapping[str, Any] | None = None,
) -> Event:
    """The event of ``event_type`` with the domain fields ``data``: validated, keyed, stamped (in one validation,
    unless its key follows from its fields); ``notify``/``notify_on`` as :func:`notice` takes them (``notified``:
    their fields, checked already)."""
    model = model_of(event_type)
    if notified is None:
        notified = notice(notify, notify_on)
    if derives_key(model):
        return stamp_event(model(**data), idempotency_key=idempotency_key, notified=notified)
    event_id = unique_id()
    if idempotency_key is None:
        key = event_id  # every call a new event (see stamp_event)
    else:
        check_caller_key("idempotency_key", idempotency_key)
        key = idempotency_key
    data.update(key=key, id=event_id, stamp=next_stamp())
    if notified:
        data.update(notified)
    try:
        # The model's own validator, straight: the schema's checks without the constructor's Python layers.
        event: Event = model.__pydantic_validator__.validate_python(data)
    except ValidationError as error:
        raise invalid_event_from(error) from None
    oversized = oversized_key(event, key_field="idempotency_key")
    if oversized is not None:
        raise oversized
    return event


def stamp_event(event: EventModel, *, idempotency_key: Any = None, notified: Mapping[str, Any] | None = None) -> Event:
    """``event`` (validated when it was made) with what the wire needs: its idempotency key (the caller's, the one
    its fields imply, or else its own id: every call a new event), a unique id, this process's ordering stamp."""
    model = type(event)
    registered = event_types().get(event.type)
    if registered is not model:
        raise InvalidEvent(
            "type",
            f"{model.__name__} is not a registered event: declare it with @<domain>.event(...) in a module that "
            "SEQPROC_DOMAINS names",
        )
    event_id = event.id or unique_id()
    derived = event.derived_key()
    if derived is not None:
        try:  # the rules the worker checks a key by: else it would be sent, then dead-lettered there
            _LEDGER_KEY.validate_python(derived)
        except ValidationError as error:
            detail = str(invalid_event_from(error)).split(": ", 1)[1]
            raise InvalidEvent("key", f"{model.__name__}.derived_key() returned a bad key: {detail}") from None
        if idempotency_key is not None and idempotency_key != derived:
            raise InvalidEvent("idempotency_key", f"must not be given: a {event.type} event is keyed {derived!r}")
        key = derived
    elif idempotency_key is not None:
        check_caller_key("idempotency_key", idempotency_key)
        key = idempotency_key
    else:
        # No key: each call is a new event (like, unlike, like again all count), and the call's own id, unique
        # already, serves as its key. A caller that may retry a request passes its own key (a request id) so
        # that the retry is recognised.
        key = event.key or event_id
    update = {"key": key, "id": event_id, "stamp": event.stamp or next_stamp(), **(notified or {})}
    stamped = event.model_copy(update=update)
    oversized = oversized_key(stamped, key_field="idempotency_key" if derived is None else "key")
    if oversized is not None:
        raise oversized
    return stamped


def check_caller_key(field: str, value: Any) -> None:
    """An idempotency key as the caller gives it: non-empty, at most 128 characters, no control characters."""
    try:
        _CALLER_KEY.validate_python(value)
    except ValidationError as error:
        raise InvalidEvent(field, str(invalid_event_from(error)).split(": ", 1)[1]) from None


def build_events(
    events: Iterable[Mapping[str, Any] | EventModel], *, notified: Mapping[str, Any] | None = None
) -> list[Event]:
    """Validate every item of a ``send_many`` call (before any is sent or written): an event, or a mapping with its
    ``type`` and fields; the first bad one raises :class:`InvalidEvent` naming its index and field
    (``events[3].quantity: ...``)."""
    built = []
    for index, spec in enumerate(events):
        if isinstance(spec, EventModel):
            try:
                built.append(stamp_event(spec, notified=notified))
            except InvalidEvent as error:
                raise InvalidEvent(f"events[{index}].{error.field}", str(error).split(": ", 1)[1]) from None
            continue
        if not isinstance(spec, Mapping):
            raise InvalidEvent(f"events[{index}]", f"must be a mapping with a 'type' (got {type(spec).__name__})")
        fields = dict(spec)
        event_type = fields.pop("type", None)
        try:
            if event_type is None:
                raise InvalidEvent("type", f"is required (one of {', '.join(public_types())})")
            built.append(build_event(str(event_type), fields, notified=notified))
        except InvalidEvent as error:
            raise InvalidEvent(f"events[{index}].{error.field}", str(error).split(": ", 1)[1]) from None
    return built


def prepare(
    events: Iterable[EventModel],
    *,
    idempotency_keys: Iterable[Any] | None = None,
    notified: Mapping[str, Any] | None = None,
) -> list[Event]:
    """Events built by the caller (``Deposit(account_id=7, amount=100)``), ready to send."""
    keys = list(idempotency_keys) if idempotency_keys is not None else None
    built = []
    for index, event in enumerate(events):
        if not isinstance(event, EventModel):
            raise InvalidEvent(f"events[{index}]", f"must be an event (got {type(event).__name__})")
        key = keys[index] if keys is not None else None
        built.append(stamp_event(event, idempotency_key=key, notified=notified))
    return built
