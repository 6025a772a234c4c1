"""The apply task's message as kombu's Redis transport stores it, built without Celery or kombu on the send path.

A Celery task message on Redis is one JSON text pushed onto the queue's list: a protocol-2 body
(``[args, kwargs, embed]``), Celery's task headers and kombu's delivery properties. Celery's ``as_task_v2`` plus
kombu's producer build the same text with ~360 microseconds of CPU per message here (a header dict assembled field by
field, the body serialised twice through kombu's registry, a producer borrowed from a pool); this builds it with two
C-level dumps, ~30 microseconds. The worker reads it with Celery's own consumer, so the format must stay exactly
Celery's: ``tests/integration/test_envelope.py`` compares it, key by key, with what Celery and kombu push.

Only for seqproc's Redis transport (``redis://``: exchange ``""``, no priority steps, ``body_encoding`` None, as
``celeryconfig`` sets them); any other broker goes through kombu (``producer.publish``).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

from celery.utils.nodenames import anon_nodename
from pydantic import SerializeAsAny, TypeAdapter

from seqproc.models.domain import EventModel
from seqproc.models.events import Event
from seqproc.models.wire import APPLY_TASK

#: Events in wire form, serialised in pydantic's Rust core (what ``model_dump`` + ``json.dumps`` give, 2x faster),
#: each by its own schema (its domain's fields), not the base class's.
_EVENTS: TypeAdapter[list[Any]] = TypeAdapter(list[SerializeAsAny[EventModel]])
#: Celery's ``embed`` part of a protocol-2 body: no callbacks, no chain, no chord.
_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'

_origin: tuple[int, str] | None = None


def origin() -> str:
    """Celery's ``origin`` header, ``gen<pid>@<host>``; computed once per process (again after a fork)."""
    global _origin
    pid = os.getpid()
    if _origin is None or _origin[0] != pid:
        _origin = (pid, anon_nodename())
    return _origin[1]


def events_json(events: Sequence[Event]) -> str:
    return _EVENTS.dump_json(list(events)).decode()


def task_envelope(
    queue: str, partition: int, events: Sequence[Event], *, task_id: str, sequence: tuple[str, int] | None = None
) -> str:
    """The JSON text to push onto ``queue`` for one apply-task message carrying ``events`` of ``partition``."""
    return envelope_of_json(queue, partition, events_json(events), len(events), task_id=task_id, sequence=sequence)


def envelope_of_json(
    queue: str,
    partition: int,
    events_array: str,
    count: int,
    *,
    task_id: str,
    sequence: tuple[str, int] | None = None,
) -> str:
    """The same, for ``count`` events already in wire form: ``events_array`` is their JSON array's text (the relay
    joins the outbox rows' bodies, which were validated when they were written). ``task_id``: unique to this message
    (:func:`~seqproc.models.stamps.unique_id`); it is its delivery tag too (kombu draws another uuid for the tag,
    but a tag only has to be unique among the messages held).

    ``sequence``: the producer and the number of the first event on the partition (``producer.sequence``), as
    ``"seq": [producer, first]`` among the task's arguments, for the worker's loss detection; the relay's messages
    carry none (the outbox sends again what a broker lost)."""
    partition = int(partition)
    seq = "" if sequence is None else f', "seq": [{_quoted(sequence[0])}, {int(sequence[1])}]'
    body = f'[[], {{"partition": {partition}, "events": {events_array}{seq}}}, {_EMBED}]'
    before_body, before_id, before_root, before_correlation, before_tag, end = _template(
        queue, partition, count, origin()
    )
    # Task ids are URL-safe text (``unique_id``: kombu's uuid4 costs a system call each): nothing in them to escape.
    return (
        f"{before_body}{_quote(body)}{before_id}{task_id}{before_root}{task_id}"
        f"{before_correlation}{task_id}{before_tag}{task_id}{end}"
    )


#: ``json.dumps`` of a string, without its Python layers (the C function it calls for one: the same text).
_quote: Callable[[str], str] = json.encoder.encode_basestring_ascii


@functools.lru_cache(maxsize=256)
def _quoted(text: str) -> str:
    """``json.dumps(text)`` for a text that repeats (a producer's name: one per process and event loop)."""
    return _quote(text)


_BODY_SLOT = "\x00body\x00"
_ID_SLOT = "\x00id\x00"
_TAG_SLOT = "\x00tag\x00"


@functools.lru_cache(maxsize=4096)
def _template(queue: str, partition: int, count: int, origin: str) -> tuple[str, ...]:
    """The constant text of a message of ``count`` events for ``queue``, cut where the per-message values go: the
    ``json.dumps`` of Celery's protocol-2 headers and kombu's properties with placeholders, so that the text is
    exactly what dumping the whole dict would give (cached: one dump per queue and count, not per message)."""
    headers: dict[str, Any] = {
        "lang": "py",
        "task": APPLY_TASK,
        "id": _ID_SLOT,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": _ID_SLOT,
        "parent_id": None,
        # Short reprs for Flower instead of a saferepr() of every event.
        "argsrepr": "()",
        "kwargsrepr": f"{{'partition': {partition}, 'events': <{count}>}}",
        "origin": origin,
        "ignore_result": True,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    properties = {
        "correlation_id": _ID_SLOT,
        "reply_to": "",
        "delivery_mode": 2,
        "delivery_info": {"exchange": "", "routing_key": queue},
        "priority": 0,
        "body_encoding": None,
        "delivery_tag": _TAG_SLOT,
    }
    text = json.dumps(
        {
            "body": _BODY_SLOT,
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": properties,
        }
    )
    before_body, rest = text.split(json.dumps(_BODY_SLOT))
    before_id, before_root, before_correlation, rest = rest.split(json.dumps(_ID_SLOT)[1:-1])
    before_tag, end = rest.split(json.dumps(_TAG_SLOT)[1:-1])
    return before_body, before_id, before_root, before_correlation, before_tag, end


# -- reading it back ------------------------------------------------------------------------------------------------

#: What every message :func:`envelope_of_json` writes starts with, holds right after its body, and ends with (around
#: the delivery tag): the parts of the text the worker reads without decoding the rest.
_OWN_HEAD = '{"body": '
_OWN_AFTER_BODY = (
    ', "content-encoding": "utf-8", "content-type": "application/json", "headers": {"lang": "py", "task": "'
    + APPLY_TASK
    + '", "id": "'
)
_OWN_TAG = '"body_encoding": null, "delivery_tag": "'
_OWN_END = '"}}'

#: The C scanner json.loads runs (``JSONDecoder.scan_once``), here to read one JSON string in place.
_scan: Callable[[str, int], tuple[Any, int]] = getattr(json.JSONDecoder(), "scan_once")  # noqa: B009


def read_own(text: str) -> tuple[str, str, str] | None:
    """``(body, task id, delivery tag)`` of a message written by :func:`envelope_of_json` (a producer's or the
    relay's), read off the text's known parts: its body (one JSON string, read by the C scanner), the task name and
    id right after it, the delivery tag at its end; the headers and properties in between are not decoded (the
    worker uses nothing else of them: about 40% of a one-event message's decoding). None for any other text: the
    caller decodes it whole, as kombu would.

    It reads what a whole decode would: the task name, id and tag are where the writer puts them, with nothing to
    unescape (ids and tags are URL-safe), and the only ``"delivery_tag": "`` outside the body (a JSON string escapes
    its quotes), which is also where the fetch script finds it."""
    if not text.startswith(_OWN_HEAD) or not text.endswith(_OWN_END):
        return None
    try:
        body, end = _scan(text, len(_OWN_HEAD))
    except (ValueError, StopIteration, RecursionError):
        return None
    if not isinstance(body, str) or not text.startswith(_OWN_AFTER_BODY, end):
        return None
    id_start = end + len(_OWN_AFTER_BODY)
    id_end = text.find('"', id_start)
    tag_at = text.rfind(_OWN_TAG)
    if id_end < 0 or tag_at < id_end or text.count('"delivery_tag": "', id_end) != 1:
        return None
    task_id = text[id_start:id_end]
    tag = text[tag_at + len(_OWN_TAG) : -len(_OWN_END)]
    if not task_id or not tag or "\\" in task_id or "\\" in tag or '"' in tag:
        return None
    return body, task_id, tag
