"""The numbers a sender gives its events, per partition, so that a worker can tell that some never came.

Each message carries ``seq``: its producer (this sender: ``gen<pid>@<host>/<random>``, new in a forked child) and
the number of its first event on the partition; the events of a partition are numbered 1, 2, 3, ... in the order
sent. A worker that sees a message start past the number it expects knows the events between were lost (a broker
failover dropped a push it had acknowledged), unless they come late (``seqproc.worker.engine.sequence``).

A message is numbered once, before its first attempt, and keeps its numbers through the retries. A send that failed
before anything was written gives its numbers back, so that a refused send leaves no gap; one that may have been
sent keeps them (if it was not, the gap is counted lost: the caller was told it may not have arrived). A send the
broker acknowledged moves the partition's *mark* (:meth:`Sequencer.sent`): where a mark message would say the
sequence stands, should the last events be lost with no later message to reveal them (``producer.marks``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from celery.utils.nodenames import anon_nodename

from seqproc.models.events import Event
from seqproc.models.stamps import unique_id

#: ``(producer, number of the message's first event)``, one per message.
Place = tuple[str, int]


class Sequencer:
    """One sender's numbering (a process's threaded publisher, or one event loop's): its sends are one at a time.

    ``on_new_producer``: called (outside the lock) when it starts numbering as a new producer: its first send, and
    the first in a forked child (the mark keeper's thread does not survive a fork)."""

    def __init__(self, *, on_new_producer: Callable[[Sequencer], None] | None = None) -> None:
        self._pid = 0
        self._next: dict[int, int] = {}
        #: Per partition, the number after the last event of an acknowledged send.
        self._acked: dict[int, int] = {}
        self._lock = threading.Lock()
        self._on_new_producer = on_new_producer
        self.producer = ""

    def number(self, messages: Sequence[tuple[int, Sequence[Event]]]) -> list[Place]:
        """Number the events of ``messages`` (``(partition, events)``, in the order they go); one place each."""
        new = False
        with self._lock:
            if self._pid != os.getpid():  # a forked child is a producer of its own, starting from 1
                self._pid, self._next, self._acked = os.getpid(), {}, {}
                self.producer = f"{anon_nodename()}/{unique_id()}"
                new = True
            places: list[Place] = []
            for partition, group in messages:
                first = self._next.get(partition, 1)
                self._next[partition] = first + len(group)
                places.append((self.producer, first))
        if new and self._on_new_producer is not None:
            self._on_new_producer(self)
        return places

    def give_back(self, messages: Sequence[tuple[int, Sequence[Event]]], places: Sequence[Place]) -> None:
        """``messages`` were not sent at all: their numbers go to the next messages (if none was numbered since)."""
        with self._lock:
            for (partition, group), (producer, first) in zip(reversed(messages), reversed(places), strict=True):
                if producer == self.producer and self._next.get(partition) == first + len(group):
                    self._next[partition] = first

    def sent(self, messages: Sequence[tuple[int, Sequence[Event]]], places: Sequence[Place]) -> None:
        """The broker acknowledged ``messages``: their partitions' marks move past them. No lock: one send at a time
        moves them, and the mark keeper copies them whole (:meth:`acked`)."""
        acked, mine = self._acked, self.producer
        for (partition, group), (producer, first) in zip(messages, places):  # noqa: B905  # one pair per message
            end = first + len(group)
            if producer is mine and end > acked.get(partition, 1):
                acked[partition] = end

    def acked(self) -> tuple[str, dict[int, int]]:
        """This producer and, per partition it sent to, the number after its last acknowledged event."""
        with self._lock:
            return self.producer, dict(self._acked)
