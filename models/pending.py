"""The pending index: per entity key, the events pushed for it and not acknowledged by a worker yet.

A partition's queue holds messages of many keys, each message many events; finding one key's events there would
cost a read of the whole queue (and of the unacknowledged messages). So every push also writes each event into its
key's index (``seqproc:pending:{<queue>}:<key>``, in its queue's slot; a hash: event id -> order + event JSON;
``_HOLD_PENDING`` in :mod:`seqproc.models.scripts`, in the same script as the push), and the worker's ack deletes
the entries of the events it settled, after their commit. ``seqproc.preview`` then reads one key's pending events
with one ``HGETALL``, whatever the depth of the queue.

An entry lives from the push to the ack: a message fetched and being applied is still pending (its commit may fail
and the message come back); one committed but not yet acknowledged is pending too, for the short time between the
commit and the ack: the preview skips an event whose idempotency key the ledger already holds. An entry whose
message the broker lost (an asynchronous replica's failover) leaves the index with its expiry
(``SEQPROC_PENDING_TTL_S`` after the key's last push).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import TypeAdapter

from seqproc.models.domain import EventModel
from seqproc.models.errors import SeqprocError
from seqproc.models.events import Event, parse_event
from seqproc.models.wire import partition_for, pending_key, queue_name

#: An entry's order prefix: the push's time (seconds, microseconds) and the entry's rank in the push.
ORDER_CHARS = 22


def event_json(event: Event) -> bytes:
    """``event`` in wire form, as the envelope's event array holds it (joined with commas inside brackets): its own
    schema's serializer, called straight (what a ``SerializeAsAny[EventModel]`` adapter writes, without the
    adapter's Python layer: a producer's call serialises its event once)."""
    return type(event).__pydantic_serializer__.to_json(event)


def hold_args(ttl_s: int, entries: Iterable[tuple[str, Any, Any]]) -> tuple[list[str], list[Any]]:
    """The keys and arguments the push scripts take for ``entries`` (pending index, event id, event JSON; the last two
    as text or bytes, passed on as they are): the indexes first, then the time to live and, per index, its count and
    its (id, JSON) pairs (the numbers as bytes). None when ``ttl_s`` is 0 (the index is off: previews show the
    applied state only)."""
    if not ttl_s:
        return [], []
    if isinstance(entries, list) and len(entries) == 1:  # one event (a web request's): nothing to group
        ((index, event_id, text),) = entries
        return [index], [b"%d" % ttl_s, b"1", event_id, text]
    by_key: dict[str, list[Any]] = {}
    for index, event_id, text in entries:
        by_key.setdefault(index, []).extend((event_id, text))
    args: list[Any] = [b"%d" % ttl_s]
    for pairs in by_key.values():
        args.append(b"%d" % (len(pairs) // 2))
        args.extend(pairs)
    return list(by_key), args


def index_of(entity_key: str, partitions: int) -> str:
    """The pending index of ``entity_key`` in a deployment of ``partitions`` partitions."""
    return pending_key(queue_name(partition_for(entity_key, partitions)), entity_key)


def index_entries(queue: str, rows: Iterable[tuple[int, str]]) -> list[tuple[str, str, str]]:
    """The index entries of outbox rows (row id, event JSON) as the relay pushes them onto ``queue``: a body that
    does not parse (the worker dead-letters it) has none."""
    entries = []
    for _, body in rows:
        event = _parsed(body)
        if event is not None:
            entries.append((pending_key(queue, event.entity_key), str(event.id), body))
    return entries


def settled_by_key(queued: Iterable[tuple[str, Iterable[EventModel]]]) -> dict[str, list[str]]:
    """The index entries to delete once the events are settled (their queue, and the events taken from it): event
    ids by pending index."""
    by_key: dict[str, list[str]] = {}
    for queue, events in queued:
        for event in events:
            if event.id is not None:
                by_key.setdefault(pending_key(queue, event.entity_key), []).append(event.id)
    return by_key


def pending_events(raw: dict[Any, Any], entity_key: str) -> list[Event]:
    """The events of an ``HGETALL`` of ``entity_key``'s index, in push order. An entry that does not parse (an event
    type this process does not know: the worker's to dead-letter) or belongs to another key is left out."""
    texts = sorted(value.decode() if isinstance(value, bytes) else str(value) for value in raw.values())
    events = (_parsed(text[ORDER_CHARS:]) for text in texts)
    return [event for event in events if event is not None and event.entity_key == entity_key]


def _parsed(text: str) -> Event | None:
    """The event in wire form ``text``, validated; None if it is not one."""
    try:
        return parse_event(_JSON.validate_json(text))
    except (ValueError, SeqprocError):  # pydantic's ValidationError is a ValueError
        return None


_JSON: TypeAdapter[Any] = TypeAdapter(Any)
