"""The dead-letter store as operators act on it (``seqproc deadletter``, the Django admin).

A dead letter is open until one of these closes it (the row is kept, with when and how):

- **replay KEY**, for a parked key: a control event through the key's partition queue makes its worker apply the
  key's open dead letters in order, exactly once, then unpark it. Refused for a key that is not parked: there is
  nothing in order to restore, and its letters (if any) are retried or discarded one by one.
- **retry ID**: the letter's event (or the events of the message it holds) sent again through its partition,
  validated and routed with the current settings (a domain loaded since, the right partition count), under its own
  idempotency key and event id: the ledger applies it once however often it is sent, and its original receipt hears
  the new outcome. Refused, the letter staying open, when it is closed already, when its event still cannot be sent
  (invalid, of a type nobody declared), or when its key is parked: a parked key's events apply in their order, which
  only its replay keeps (a retry would apply one event ahead of the older ones).
- **discard ID**: closes it, with the reason, who and when.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, func, select, update

from seqproc.models.errors import DeadLetterRefused, InvalidEvent
from seqproc.models.events import Event, Replay, parse_event, readable_event_id
from seqproc.models.stamps import next_stamp, unique_id
from seqproc.models.tables.ledger import DISCARDED_BY_LENGTH, DeadLetter, ParkedKey, dead_letter_state
from seqproc.producer.publish import Publisher
from seqproc.producer.receipt import Receipt


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def state_of(row: RowMapping) -> str:
    """``open``, ``replayed``, ``retried`` or ``discarded``."""
    return dead_letter_state(
        replayed_at=row["replayed_at"], retried_at=row["retried_at"], discarded_at=row["discarded_at"]
    )


def list_dead_letters(
    conn: Connection, *, entity_key: str | None = None, include_closed: bool = False, limit: int = 100
) -> list[dict[str, Any]]:
    """The open dead letters, oldest first (``include_closed``: the replayed, retried and discarded ones too)."""
    query = select(DeadLetter).order_by(DeadLetter.id).limit(limit)
    if entity_key is not None:
        query = query.where(DeadLetter.entity_key == entity_key)
    if not include_closed:
        query = query.where(DeadLetter.is_open())
    rows = conn.execute(query.with_only_columns(*DeadLetter.__table__.columns)).mappings()
    return [
        {
            "id": row["id"],
            "state": state_of(row),
            "partition": row["partition"],
            "entity_key": row["entity_key"],
            "event_key": row["event_key"],
            "error": row["error"],
            "created_at": _when(row["created_at"]),
            "replayed_at": _when(row["replayed_at"]),
            "retried_at": _when(row["retried_at"]),
            "retried_as": row["retried_as"],
            "discarded_at": _when(row["discarded_at"]),
            "discarded_by": row["discarded_by"],
            "discard_reason": row["discard_reason"],
            "body": row["body"][:500],
        }
        for row in rows
    ]


def parked_keys(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(select(ParkedKey.__table__).order_by(ParkedKey.parked_at)).mappings()
    return [
        {
            "entity_key": r["entity_key"],
            "partition": r["partition"],
            "reason": r["reason"],
            "parked_at": _when(r["parked_at"]),
        }
        for r in rows
    ]


# -- replay ------------------------------------------------------------------------------------------------------
def replay_event(entity_key: str) -> Event:
    """The control event that makes the partition's worker apply ``entity_key``'s dead letters, then unpark it.

    Only the key's form is checked (``<entity>:<key>``): routing a key needs no domain module, so a process that
    does not load the key's domain (a Django admin without ``SEQPROC_DOMAINS``) replays it all the same; whether it
    is parked is :func:`require_parked`'s to say."""
    try:
        return Replay(type="replay", key=unique_id(), id=unique_id(), stamp=next_stamp(), entity=entity_key)
    except InvalidEvent:
        raise InvalidEvent(
            "KEY", f"must be an entity key, <entity>:<key> such as article:42 or product:7 (got {entity_key!r})"
        ) from None


def require_parked(conn: Connection, entity_key: str) -> None:
    """Raise :class:`DeadLetterRefused` unless ``entity_key`` is parked (what a replay is for)."""
    if conn.execute(select(ParkedKey.entity_key).where(ParkedKey.entity_key == entity_key)).first() is not None:
        return
    letters = conn.execute(
        select(DeadLetter.id)
        .where(DeadLetter.entity_key == entity_key, DeadLetter.is_open())
        .order_by(DeadLetter.id)
        .limit(10)
    ).scalars()
    ids = ", ".join(map(str, letters))
    which = f"its open dead letters ({ids}) are" if ids else "a dead letter that names it is (seqproc deadletter list)"
    raise DeadLetterRefused(
        f"{entity_key} is not parked: replay applies a parked key's dead letters in order; {which} retried or "
        "discarded by id: seqproc deadletter retry ID, seqproc deadletter discard ID --reason ..."
    )


# -- retry and discard -------------------------------------------------------------------------------------------
def retry_dead_letter(conn: Connection, letter_id: int, publisher: Publisher) -> list[Receipt]:
    """Send dead letter ``letter_id``'s events again and mark it retried, in the caller's transaction: the row is
    locked from the check to the mark, so two operators cannot both send it. Sent and then not committed (the
    database lost meanwhile), the letter stays open and a second retry is a duplicate in the ledger (same keys).
    Raises :class:`DeadLetterRefused` (nothing sent) or :class:`PublishError` (nothing sent, the letter open)."""
    row = _locked(conn, letter_id, "retried")
    events = events_to_retry(letter_id, row["body"])
    entities = sorted({event.entity_key for event in events})
    parked = conn.execute(select(ParkedKey.entity_key).where(ParkedKey.entity_key.in_(entities))).scalars().first()
    if parked is not None:
        raise DeadLetterRefused(
            f"dead letter {letter_id}: {parked} is parked, and its events must apply in their order: replay the key "
            f"(seqproc deadletter replay {parked}), which applies its dead letters oldest first"
        )
    # The event keeps its id: the outcome its receipt holds (rejected, dead_lettered) gives way to the new one.
    publisher.outcomes.forget([str(event.id) for event in events])
    receipts = publisher.publish(events)
    conn.execute(
        update(DeadLetter)
        .where(DeadLetter.id == letter_id)
        .values(retried_at=func.now(), retried_as=", ".join(str(event.key) for event in events))
    )
    return receipts


def discard_dead_letter(conn: Connection, letter_id: int, *, reason: str, by: str | None) -> None:
    """Close dead letter ``letter_id`` without applying it, keeping ``reason``, who (``by``) and when."""
    reason = reason.strip()
    if not reason:
        raise DeadLetterRefused(f"dead letter {letter_id}: --reason must say why it is discarded (got nothing)")
    _locked(conn, letter_id, "discarded")
    conn.execute(
        update(DeadLetter)
        .where(DeadLetter.id == letter_id)
        .values(discarded_at=func.now(), discarded_by=by[:DISCARDED_BY_LENGTH] if by else None, discard_reason=reason)
    )


def _locked(conn: Connection, letter_id: int, action: str) -> RowMapping:
    """The open letter ``letter_id``, locked until the transaction ends; else :class:`DeadLetterRefused`."""
    row = (
        conn.execute(select(*DeadLetter.__table__.columns).where(DeadLetter.id == letter_id).with_for_update())
        .mappings()
        .first()
    )
    if row is None:
        raise DeadLetterRefused(f"dead letter {letter_id}: there is none (seqproc deadletter list --all shows them)")
    state = state_of(row)
    if state != "open":
        detail = {
            "retried": f" as {row['retried_as']!r}",
            "discarded": f" by {row['discarded_by'] or 'someone'} ({row['discard_reason']})",
        }.get(state, "")
        raise DeadLetterRefused(
            f"dead letter {letter_id} was {state} at {_when(row[state + '_at'])}{detail}: only an open dead letter "
            f"can be {action}"
        )
    return row


def events_to_retry(letter_id: int, body: str) -> list[Event]:
    """The events a dead letter holds, valid with the domains loaded now; else :class:`DeadLetterRefused` naming
    the first fault. A letter holds one event in wire form (the usual case), or a whole message
    (``[args, {"events": [...]}, embed]``: one received on a queue that is not a partition queue). What the producer
    fills in and the event lacks is filled in: an idempotency key derived from the letter (so that a retry sent twice
    is still one event in the ledger), a fresh id, a stamp of now."""
    try:
        data = json.loads(body)
    except ValueError:
        raise _unsendable(letter_id, "its body is not JSON (a message seqproc could not read)") from None
    if isinstance(data, dict):
        items: Sequence[Any] = [data]
    elif (
        isinstance(data, list)
        and len(data) == 3
        and isinstance(data[1], dict)
        and isinstance(data[1].get("events"), list)
        and data[1]["events"]
    ):
        items = data[1]["events"]
    else:
        raise _unsendable(letter_id, "its body is neither an event nor a seqproc message")
    events = []
    for index, item in enumerate(items):
        where = f"events[{index}]." if len(items) > 1 else ""
        if not isinstance(item, dict):
            raise _unsendable(letter_id, f"{where.rstrip('.') or 'its event'} is not an object")
        filled = dict(item)
        if filled.get("key") is None:
            filled["key"] = f"deadletter-{letter_id}" + (f"-{index}" if len(items) > 1 else "")
        filled["id"] = readable_event_id(item) or unique_id()
        if filled.get("stamp") is None:
            filled["stamp"] = next_stamp()
        try:
            event = parse_event(filled)
        except InvalidEvent as error:
            raise _unsendable(letter_id, f"{where}{error}", invalid=True) from None
        if isinstance(event, Replay):
            raise _unsendable(letter_id, f"{where}it is a replay request: replay its key instead")
        events.append(event)
    return events


def _unsendable(letter_id: int, why: str, *, invalid: bool = False) -> DeadLetterRefused:
    """``invalid``: the event is readable but fails validation here, which a fix may change."""
    fix = "fix the cause first (load its domain: SEQPROC_DOMAINS), or discard it" if invalid else "discard it"
    return DeadLetterRefused(f"dead letter {letter_id} cannot be sent again: {why}; {fix}")
