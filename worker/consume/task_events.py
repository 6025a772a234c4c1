"""Celery task events for Flower, two per message (:class:`FlowerEvents`, a subscriber of the worker's
``after_settle`` hook: ``worker.hooks``).

Per message, after its partition's commit: "task-received" (Flower counts it as "processed"), with the task's name
and arguments, and "task-succeeded", with its result and runtime; Flower merges both into the task. They go out
together in one "task.multi" message, as ``EventDispatcher``'s own buffer would send them, with the same fields:
the events of every batch settled within :data:`TASK_EVENTS_INTERVAL_S` in one publish (a publish through kombu
costs ~200 us of CPU; under a web server's stream of one-event messages a worker settles a batch every few
milliseconds, and one publish per batch cost it ~30 us per event), and those still waiting when the consumer stops.

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
#: How long a settled batch's task events may wait for the next ones (Flower shows its tasks this much later).
TASK_EVENTS_INTERVAL_S = 0.2
#: ... and how many messages' events, at most: then they go at once.
TASK_EVENTS_MAX_MESSAGES = 1000


@dataclass(frozen=True, slots=True)
class Settled:
    """What the events of one message say: its task id, partition, and how many events and dead letters it had."""

    task_id: str | None
    partition: int | None
    events: int
    dead_letters: int


class FlowerEvents:
    """The ``after_settle`` subscriber: the task events of each settled batch's messages, gathered for up to
    :data:`TASK_EVENTS_INTERVAL_S` on the consumer's timer, then published on its dispatcher (``consumer()`` gives
    the current consumer: it changes when Celery restarts it). Without a consumer's event loop, at once."""

    def __init__(self, consumer: Callable[[], Any]) -> None:
        self.consumer = consumer
        self._parts: list[str] = []
        self._messages = 0
        self._timer: Any = None

    def after_settle(self, settled: SettledBatch) -> None:
        consumer = self.consumer()
        dispatcher = getattr(consumer, "event_dispatcher", None)
        if not sends_task_events(dispatcher):
            return
        messages = [Settled(d.task_id, d.partition, len(d.events), len(d.dead_letters)) for d in settled.messages]
        try:
            self._parts += event_texts(dispatcher, messages, settled.outcomes, settled.elapsed_s)
        except Exception:
            logger.warning("could not build the task events of %d message(s)", len(messages), exc_info=True)
            return
        self._messages += len(messages)
        timer = getattr(consumer, "timer", None)
        if self._messages >= TASK_EVENTS_MAX_MESSAGES or timer is None or getattr(consumer, "hub", None) is None:
            self.flush()
        elif self._timer is None:
            self._timer = timer.call_after(TASK_EVENTS_INTERVAL_S, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Publish the task events waiting (the consumer's stop calls this too); never raises."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        parts, messages = self._parts, self._messages
        self._parts, self._messages = [], 0
        dispatcher = getattr(self.consumer(), "event_dispatcher", None)
        if parts and sends_task_events(dispatcher):
            _publish_text(dispatcher, "[" + ", ".join(parts) + "]", messages)


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
    if text is not None:
        _publish_text(dispatcher, text, len(messages))


def _publish_text(dispatcher: Any, text: str, messages: int) -> None:
    """Publish ``text`` (a JSON list of task events, of ``messages`` messages) as one "task.multi" message."""
    if dispatcher.producer is None:
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
        logger.debug("could not publish the task events of %d message(s)", messages, exc_info=True)


def events_json(
    dispatcher: Any, messages: Sequence[Settled], outcomes: Sequence[Outcome], elapsed: float
) -> str | None:
    """The JSON text of the events' list (None: no message has a task id), each event with the fields
    ``EventDispatcher.send`` gives it: hostname, utcoffset, pid, clock, timestamp, type, then the event's own."""
    parts = event_texts(dispatcher, messages, outcomes, elapsed)
    return "[" + ", ".join(parts) + "]" if parts else None


def event_texts(dispatcher: Any, messages: Sequence[Settled], outcomes: Sequence[Outcome], elapsed: float) -> list[str]:
    """Each event of :func:`events_json`'s list, as JSON text."""
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
    return parts


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
