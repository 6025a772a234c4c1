"""Reading a message from a partition queue without trusting it: JSON only (never pickle), bounded size, every
event validated against the schema and checked to belong to the queue's partition. What fails is turned into a
dead-letter record with its raw body and the reason; nothing is dropped silently."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import Field, TypeAdapter, ValidationError, create_model

from seqproc.models.domain import event_types, registry_version
from seqproc.models.errors import InvalidEvent
from seqproc.models.events import Event, oversized_key, parse_event, readable_event_id
from seqproc.models.tables.sequence import PRODUCER_ID_LENGTH
from seqproc.models.wire import APPLY_TASK, partition_for, partition_of_queue
from seqproc.worker.engine.apply import DeadLetterRecord
from seqproc.worker.engine.sequence import Sequenced

#: Largest message body accepted: 500 events take ~100 KiB; far more than that is not ours.
MAX_BODY_BYTES = 4 * 1024 * 1024
#: Largest body kept in a dead letter (the rest is summarised by size and sha256).
MAX_STORED_BODY_BYTES = 256 * 1024


@dataclass
class Decoded:
    """A message read as far as it could be: its partition (from the queue), valid events, and dead letters."""

    partition: int | None
    queue: str | None
    task_id: str | None
    events: list[Event] = field(default_factory=list)
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    #: Its place in its producer's sequence of the partition (direct publishes; loss detection), if it says.
    sequence: Sequenced | None = None


def body_text(body: bytes | str | None) -> str:
    """The body as storable text: UTF-8 as is, anything else (or with NUL bytes) base64 with a prefix."""
    if body is None:
        return ""
    raw = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else bytes(body)
    note = ""
    if len(raw) > MAX_STORED_BODY_BYTES:
        note = f" [truncated: {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()}]"
        raw = raw[:MAX_STORED_BODY_BYTES]
    try:
        text = raw.decode("utf-8")
        if "\x00" not in text:
            return text + note
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(raw).decode("ascii") + note


def event_text(raw_event: object) -> str:
    """One event of a message as storable text, cut like any stored body: a dead letter keeps only its own event,
    and one huge field must not bloat the dead-letter table."""
    return body_text(json.dumps(raw_event, separators=(",", ":"), default=str))


#: A whole apply-task body (``[args, kwargs, embed]``), validated by pydantic's core straight from the JSON text: one
#: call for the message instead of ``json.loads`` and a validation per event (the worker's decode CPU halves).
@dataclass(frozen=True)
class _Validators:
    """Validators of apply-task bodies (``[args, {"events": [...]}, embed]``) over every registered event type,
    discriminated by ``type``: one pydantic call per body, or per fetch (:func:`decode_chunk`)."""

    version: int
    body: TypeAdapter[Any]
    bodies: TypeAdapter[Any]


_VALIDATORS: list[_Validators] = []


def _validators() -> _Validators:
    version = registry_version()
    if not _VALIDATORS or _VALIDATORS[0].version != version:
        kwargs = create_model("_Kwargs", events=(_events_type(), ...), seq=(tuple[str, int] | None, None))
        body: Any = tuple[list[Any], kwargs, dict[str, Any]]  # type: ignore[valid-type]
        _VALIDATORS[:] = [_Validators(version, TypeAdapter(body), TypeAdapter(list[body]))]
    return _VALIDATORS[0]


def _events_type() -> Any:
    models = tuple(event_types().values())
    if len(models) == 1:
        return list[models[0]]  # type: ignore[valid-type]
    return list[Annotated[Union[models], Field(discriminator="type")]]  # type: ignore[valid-type]  # noqa: UP007


def _complete(events: list[Event]) -> bool:
    """Every event carries its key, id and stamp (the wire requires them; the schemas let callers leave them out),
    and its keys fit where seqproc stores them; otherwise the message is read event by event (:func:`complete`)."""
    for event in events:  # a loop, not all() over a generator: most messages carry one event
        if event.key is None or event.id is None or event.stamp is None or oversized_key(event) is not None:
            return False
    return True


def _at_home(events: list[Event], partition: int, partitions: int) -> bool:
    """Every event's entity belongs to ``partition``."""
    for event in events:  # noqa: SIM110  # a loop, as above: all() over a generator costs more than one check
        if partition_for(event.entity_key, partitions) != partition:
            return False
    return True


def _all_valid(raw: Any, partition: int, partitions: int) -> tuple[list[Event], Sequenced | None] | None:
    """The events of a body that is valid through and through (the usual case) and its place in its producer's
    sequence, else None. The same schema as :func:`models.events.parse_event`, so it accepts exactly what the
    event-by-event path accepts."""
    try:
        _args, kwargs, _embed = _validators().body.validate_json(raw)
    except ValidationError:
        return None
    events: list[Event] = kwargs.events
    if not _complete(events):
        return None
    if not _at_home(events, partition, partitions):
        return None
    return events, _sequenced(kwargs.seq, len(events))


def _sequenced(seq: object, count: int) -> Sequenced | None:
    """``"seq": [producer, first]`` of a message of ``count`` events, if well formed (else: no check, as for a
    message that carries none). A message of no event is a producer's mark (``producer.marks``): its events before
    ``first`` were all sent."""
    if (
        isinstance(seq, list | tuple)
        and len(seq) == 2
        and isinstance(seq[0], str)
        and 0 < len(seq[0]) <= PRODUCER_ID_LENGTH
        and isinstance(seq[1], int)
        and seq[1] >= 1
    ):
        return Sequenced(seq[0], seq[1], count)
    return None


def decode_message(message: Any, *, partitions: int) -> Decoded:
    """Read a kombu message of the apply task. Never raises for bad input: it dead-letters it."""
    delivery = message.delivery_info or {}
    queue = delivery.get("routing_key")
    partition = partition_of_queue(queue) if isinstance(queue, str) else None
    headers = message.headers or {}
    decoded = Decoded(partition, queue, headers.get("id"))

    def dead(
        error: str, *, event_key: str | None = None, body: str | None = None, event_ids: tuple[str, ...] = ()
    ) -> Decoded:
        decoded.dead_letters.append(
            DeadLetterRecord(
                error=error,
                body=body if body is not None else body_text(message.body),
                partition=partition,
                queue=queue,
                event_key=event_key,
                content_type=message.content_type,
                event_ids=event_ids,
            )
        )
        return decoded

    if message.content_type != "application/json":
        return dead(f"content type {message.content_type!r} is not accepted: only application/json")
    raw = message.body
    if raw is not None and len(raw) > MAX_BODY_BYTES:
        return dead(f"body of {len(raw)} bytes is over the {MAX_BODY_BYTES}-byte limit")
    if partition is not None:
        valid = _all_valid(raw, partition, partitions)
        if valid is not None:
            decoded.events, decoded.sequence = valid
            return decoded
    # Something is wrong somewhere: read it event by event, to dead-letter exactly what is at fault.
    try:
        body = json.loads(raw)
        _args, kwargs, _embed = body
        events = kwargs["events"]
        if not isinstance(events, list):
            raise TypeError("events is not a list")
    except (ValueError, TypeError, KeyError, RecursionError) as error:
        return dead(f"not a seqproc message (expected [args, {{'events': [...]}}, embed]): {error}")
    if partition is None:
        return dead(f"received on {queue!r}, which is not a partition queue", event_ids=_ids_of(events))
    # Its events arrived, applied or dead-lettered: either way not lost.
    decoded.sequence = _sequenced(kwargs.get("seq") if isinstance(kwargs, dict) else None, len(events))
    for raw_event in events:
        key = raw_event.get("key") if isinstance(raw_event, dict) else None
        event_key = key[:160] if isinstance(key, str) else None
        try:
            event = parse_event(raw_event)
        except InvalidEvent as error:
            ids = _ids_of([raw_event])
            dead(f"invalid event: {error}", event_key=event_key, body=event_text(raw_event), event_ids=ids)
            continue
        home = partition_for(event.entity_key, partitions)
        if home != partition:
            dead(
                f"{event.entity_key} belongs to partition {home}, not {partition}: was it sent with another "
                "partition count?",
                event_key=event_key,
                body=event_text(raw_event),
                event_ids=(str(event.id),),
            )
            continue
        decoded.events.append(event)
    return decoded


def _ids_of(raw_events: list[Any]) -> tuple[str, ...]:
    """The ids that can be read among events dead-lettered as received: each gets its outcome once the letter is
    committed (see ``DeadLetterRecord.event_ids``)."""
    return tuple(event_id for event_id in map(readable_event_id, raw_events) if event_id is not None)


#: Many apply-task bodies as one JSON array, validated in one call (see :func:`decode_chunk`).
def decode_chunk(chunk: Sequence[Any], *, partitions: int) -> list[Decoded]:
    """Read a whole fetch (:class:`seqproc.models.transport.Fetched` messages): when every message is a valid
    apply-task message of its partition (the usual case), their bodies are validated together in one pydantic call
    over one JSON array; otherwise each message is read on its own (:func:`decode_fetched`), which dead-letters
    exactly what is at fault. Never raises for bad input."""
    texts: list[str] = []
    partitions_of: list[int] = []
    for message in chunk:
        partition = partition_of_queue(message.queue)
        body = message.body
        if (
            partition is None
            or message.content_type != "application/json"
            or message.headers.get("task") != APPLY_TASK
            or not isinstance(body, str)
            or len(body) > MAX_BODY_BYTES
        ):
            break
        texts.append(body)
        partitions_of.append(partition)
    else:
        try:
            bodies = _validators().bodies.validate_json("[" + ",".join(texts) + "]")
        except ValidationError:
            bodies = []
        if len(bodies) == len(chunk):
            decoded = []
            for message, partition, (_args, kwargs, _embed) in zip(chunk, partitions_of, bodies, strict=True):
                events = kwargs.events
                if not _complete(events) or not _at_home(events, partition, partitions):
                    break
                sequence = _sequenced(kwargs.seq, len(events))
                decoded.append(Decoded(partition, message.queue, message.headers.get("id"), events, [], sequence))
            else:
                return decoded
    return [decode_fetched(message, partitions=partitions) for message in chunk]


def decode_fetched(message: Any, *, partitions: int) -> Decoded:
    """One fetched message, read as Celery's consumer would have, then as :func:`decode_message` reads it: a
    message without a task header, or of another task, is dead-lettered like one Celery would refuse."""
    name = message.headers.get("task")
    if name != APPLY_TASK:
        queue = message.queue
        partition = partition_of_queue(queue)
        error = (
            "not a Celery task message (no task header)"
            if name is None
            else f"unknown task {name!r}: partition queues carry only {APPLY_TASK}"
        )
        record = DeadLetterRecord(
            error=error,
            body=body_text(message.body if isinstance(message.body, bytes | str) else message.raw),
            partition=partition,
            queue=queue,
            content_type=message.content_type,
        )
        return Decoded(partition, queue, message.headers.get("id"), dead_letters=[record])
    return decode_message(message, partitions=partitions)
