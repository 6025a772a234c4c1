"""Celery task events for Flower, two per message, published once per partition batch (:class:`FlowerEvents`, a
subscriber of the worker's ``after_settle`` hook: ``worker.hooks``).

Per message, after its partition's commit: "task-received" (Flower counts it as "processed"), with the task's name
and arguments, and "task-succeeded", with its result and runtime; Flower merges both into the task. They go out
together in one "task.multi" message, as ``EventDispatcher``'s own buffer would send them, with the same fields.

Built here rather than through ``EventDispatcher.send``, which takes a clock tick, a UTC offset and a new dict per
event through several calls, and whose JSON encoding of a flush's events then costs more than reading and applying
the messages did: the text of the whole message is written directly, the fields that do not change within a flush
(host, pid, offset, time, runtime) encoded once, the per-message texts (arguments, result) cached, so that what a
receiver decodes is exactly the list of dicts the dispatcher would have sent.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery.utils.time import utcoffset

from seqproc.models.outcomes import Outcome, count_statuses
from seqproc.models.wire import APPLY_TASK

if TYPE_CHECKING:
    from seqproc.worker.hooks import Settled as SettledBatch

logger = logging.getLogger(__name__)

ROUTING_KEY = "task.multi"


@dataclass(frozen=True, slots=True)
class Settled:
    """What the events of one message say: its task id, partition, and how many events and dead letters it had."""

    task_id: str | None
    partition: int | None
    events: int
    dead_letters: int


class FlowerEvents:
    """The ``after_settle`` subscriber: the task events of each settled batch's messages, on the dispatcher that
    ``dispatcher()`` gives (the current consumer's: it changes when Celery restarts the consumer)."""

    def __init__(self, dispatcher: Callable[[], Any]) -> None:
        self.dispatcher = dispatcher

    def after_settle(self, settled: SettledBatch) -> None:
        dispatcher = self.dispatcher()
        if not sends_task_events(dispatcher):
            return
        messages = [Settled(d.task_id, d.partition, len(d.events), len(d.dead_letters)) for d in settled.messages]
        publish(dispatcher, messages, settled.outcomes, settled.elapsed_s)


def sends_task_events(dispatcher: Any) -> bool:
    """``dispatcher`` (an ``EventDispatcher`` or None) sends task events."""
    return dispatcher is not None and dispatcher.enabled and (not dispatcher.groups or "task" in dispatcher.groups)


def publish(dispatcher: Any, messages: Sequence[Settled], outcomes: Sequence[Outcome], elapsed: float) -> None:
    """Publish the task events of ``messages`` (``outcomes``: their events' outcomes, in order) on ``dispatcher``
    (the consumer's ``EventDispatcher``), if it sends task events. Never raises: Flower's view must not stop the
    acks that follow."""
    if not sends_task_events(dispatcher):
        return
    try:
        text = events_json(dispatcher, messages, outcomes, elapsed)
    except Exception:
        logger.warning("could not build the task events of %d message(s)", len(messages), exc_info=True)
        return
    if text is None or dispatcher.producer is None:
        return
    try:
        with dispatcher.mutex:
            options: dict[str, Any] = {
                "routing_key": ROUTING_KEY,
                "exchange": dispatcher.exchange.name,
                "declare": [dispatcher.exchange],
                "headers": dispatcher.headers,
                "delivery_mode": dispatcher.delivery_mode,
                "retry": False,
            }
            if dispatcher.serializer == "json":
                dispatcher.producer.publish(text, content_type="application/json", content_encoding="utf-8", **options)
            else:
                dispatcher.producer.publish(json.loads(text), serializer=dispatcher.serializer, **options)
    except Exception:
        # What EventDispatcher does with events it could not publish: keep them for its next flush (Celery's
        # consumer flushes a new connection's dispatcher with the old one's buffer).
        pending = getattr(dispatcher, "_outbound_buffer", None)
        if dispatcher.buffer_while_offline and pending is not None:
            pending.append((json.loads(text), ROUTING_KEY))
        logger.debug("could not publish the task events of %d message(s)", len(messages), exc_info=True)


def events_json(
    dispatcher: Any, messages: Sequence[Settled], outcomes: Sequence[Outcome], elapsed: float
) -> str | None:
    """The JSON text of the events' list (None: no message has a task id), each event with the fields
    ``EventDispatcher.send`` gives it: hostname, utcoffset, pid, clock, timestamp, type, then the event's own."""
    common = (
        f'"hostname": {json.dumps(dispatcher.hostname)}, "utcoffset": {int(utcoffset())}, '
        f'"pid": {int(dispatcher.pid)}, "timestamp": {float(time.time())!r}, '
    )
    runtime = f"{float(elapsed)!r}"
    tick = dispatcher.clock.forward
    parts: list[str] = []
    position = 0
    for message in messages:
        mine = outcomes[position : position + message.events]
        position += message.events
        if message.task_id is None:
            continue
        uuid = _text(message.task_id)
        parts.append(
            f'{{{common}"clock": {int(tick())}, "type": "task-received", "uuid": {uuid}, '
            f'"name": "{APPLY_TASK}", "args": "()", '
            f'"kwargs": {_summary(message.partition, message.events, message.dead_letters)}}}'
        )
        parts.append(
            f'{{{common}"clock": {int(tick())}, "type": "task-succeeded", "uuid": {uuid}, '
            f'"result": {_result(*_tally(mine), message.dead_letters)}, "runtime": {runtime}}}'
        )
    return "[" + ", ".join(parts) + "]" if parts else None


def _text(value: str) -> str:
    """``value`` as a JSON string; ids made of ASCII letters, digits, ``-`` and ``_`` (seqproc's and uuid4's) need
    no escaping."""
    if value.isascii() and value.replace("-", "").replace("_", "").isalnum():
        return f'"{value}"'
    return json.dumps(value)


def _tally(outcomes: Sequence[Outcome]) -> tuple[int, int, int]:
    """(applied, duplicate, rejected) among ``outcomes``."""
    if len(outcomes) == 1:  # a one-event message: the usual case with many producer processes
        return _ONE[outcomes[0].status]
    counts = count_statuses(outcomes)
    return counts["applied"], counts["duplicate"], counts["rejected"]


_ONE = {"applied": (1, 0, 0), "duplicate": (0, 1, 0), "rejected": (0, 0, 1)}


@functools.lru_cache(maxsize=1024)
def _result(applied: int, duplicate: int, rejected: int, dead_lettered: int) -> str:
    """A message's result as Flower shows it (the repr of its statuses' counts), as JSON text; few distinct
    values, cached."""
    return json.dumps(
        repr({"applied": applied, "duplicate": duplicate, "rejected": rejected, "dead_lettered": dead_lettered})
    )


@functools.lru_cache(maxsize=1024)
def _summary(partition: int | None, events: int, invalid: int) -> str:
    """A message's arguments as Flower shows them (its kwargs' repr, without its events), as JSON text."""
    return json.dumps(repr({"partition": partition, "events": events, "invalid": invalid}))
