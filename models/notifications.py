"""Outcome notifications: an event sent with ``notify="user:42"`` has its outcome published to that topic after the
commit that applied, rejected or dead-lettered it, for ``seqproc.notifications(topic)`` to read.

A topic is a Redis Stream in the result backend (``seqproc:notify:<topic>``): the worker appends with ``XADD
MAXLEN ~ SEQPROC_NOTIFY_MAX`` and refreshes its ``EXPIRE SEQPROC_NOTIFY_TTL_S``, in the same round trip as the
flush's outcomes; a reader gets what follows its cursor (the stream id) with ``XREAD``, blocking while there is
nothing yet. Delivery is at least once: a notification is never lost while its topic keeps it, and a reader that
passes its last cursor back gets each one once.

An outcome of a duplicate is not notified twice: beside each stream, a set of the idempotency keys it notified
(``seqproc:notified:<topic>``, same expiry) lets the worker skip the ones already told. So a worker killed between
its commit and the publish (the redelivery is a ``duplicate``) still notifies the first outcome, once; a caller's
retry under the same key is not notified again.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from seqproc.models.domain import EventModel
from seqproc.models.settings import DEFAULT_NOTIFY_MAX, DEFAULT_NOTIFY_TTL_S
from seqproc.models.wire import notified_key, notify_key

if TYPE_CHECKING:
    from seqproc.models.outcomes import Outcome

#: A reader gets at most this many notifications per call.
READ_COUNT = 1_000


@dataclass(frozen=True, slots=True)
class Notification:
    """One event's outcome as its topic tells it. ``cursor``: pass it as ``after=`` to read what follows."""

    cursor: str
    idempotency_key: str
    type: str
    #: The event's entity key (``article:42``).
    key: str
    #: ``applied`` or ``rejected`` (a dead letter is ``rejected`` with the reason ``dead_lettered``).
    status: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class Notice:
    """What the worker publishes for one event: ``note`` (its cursor yet to be given) to ``topic``, once per
    ``once`` (the event's idempotency key's)."""

    topic: str
    once: str
    note: Notification


@dataclass(frozen=True, slots=True)
class Notices:
    """The notifications of one flush, with how long and how many their topics keep."""

    items: list[Notice]
    ttl_s: int = DEFAULT_NOTIFY_TTL_S
    max: int = DEFAULT_NOTIFY_MAX


def notices_of(events: Sequence[EventModel], outcomes: Sequence[Outcome]) -> list[Notice]:
    """The notifications due for ``events`` and their outcomes: those sent with ``notify``, filtered by
    ``notify_on``. A duplicate is told its first outcome (the publish skips it if that was told already)."""
    notices = []
    for event, outcome in zip(events, outcomes, strict=True):
        topic = event.notify
        if topic is None:
            continue
        told = outcome.effective
        if told.status == "duplicate":  # a first outcome the ledger did not keep: nothing to tell
            continue
        if event.notify_on == "rejected" and told.status != "rejected":
            continue
        # A dead letter may be replayed and applied later: that outcome is told too.
        once = event.ledger_key if told.reason != "dead_lettered" else f"{event.ledger_key}#dead"
        note = Notification("", str(event.key), event.type, event.entity_key, told.status, told.reason)
        notices.append(Notice(topic, once, note))
    return notices


def publish_args(notices: Notices) -> tuple[list[str], list[Any]]:
    """The keys and arguments of ``PUBLISH_NOTIFICATIONS`` (:mod:`seqproc.models.scripts`) for ``notices``."""
    keys: list[str] = []
    args: list[Any] = [notices.ttl_s, notices.max]
    for notice in notices.items:
        keys += (notify_key(notice.topic), notified_key(notice.topic))
        note = notice.note
        args += (notice.once, note.idempotency_key, note.type, note.key, note.status, note.reason or "")
    return keys, args


def xread_args(topic: str, after: str | None) -> dict[str, Any]:
    """What ``XREAD`` takes to read ``topic`` after ``after`` (None: from the oldest kept)."""
    return {"streams": {notify_key(topic): after or "0-0"}, "count": READ_COUNT}


def from_xread(reply: Any) -> list[Notification]:
    """The notifications of an ``XREAD`` reply (redis-py's form: ``[[stream, [(id, fields), ...]]]``)."""
    found = []
    for _stream, entries in reply or ():
        for entry_id, fields in entries:
            text = {_text(name): _text(value) for name, value in fields.items()}
            found.append(
                Notification(
                    cursor=_text(entry_id),
                    idempotency_key=text["idempotency_key"],
                    type=text["type"],
                    key=text["key"],
                    status=text["status"],
                    reason=text["reason"] or None,
                )
            )
    return found


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class MemoryNotifications:
    """Topics in this process, for the embedded mode (memory result backend): the same cursors and limits."""

    def __init__(self) -> None:
        self._topics: dict[str, deque[tuple[int, Notification, float]]] = {}
        self._told: dict[str, dict[str, float]] = {}
        self._next = 0
        self._changed = threading.Condition()

    def publish(self, notices: Notices) -> None:
        with self._changed:
            now = time.monotonic()
            for notice in notices.items:
                told = self._told.setdefault(notice.topic, {})
                if told.get(notice.once, 0) > now:
                    continue
                told[notice.once] = now + notices.ttl_s
                self._next += 1
                entries = self._topics.setdefault(notice.topic, deque())
                note = replace(notice.note, cursor=f"{self._next}-0")
                entries.append((self._next, note, now + notices.ttl_s))
                while len(entries) > notices.max:
                    entries.popleft()
            self._changed.notify_all()

    def read(self, topic: str, after: str | None, timeout_s: float) -> list[Notification]:
        start = int(after.split("-")[0]) if after else 0

        def found() -> list[Notification]:
            now = time.monotonic()
            entries = self._topics.get(topic, ())
            return [note for seq, note, expires in entries if seq > start and expires > now][:READ_COUNT]

        with self._changed:
            self._changed.wait_for(found, timeout=timeout_s)
            return found()
