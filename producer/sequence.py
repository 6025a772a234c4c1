"""The numbers a sender gives its events, per partition, so that a worker can tell that some never came.

Each message carries ``seq``: its producer (this sender: ``gen<pid>@<host>/<random>``, new in a forked child) and
the number of its first event on the partition; the events of a partition are numbered 1, 2, 3, ... in the order
sent. A worker that sees a message start past the number it expects knows the events between were lost (a broker
failover dropped a push it had acknowledged), unless they come late (``seqproc.worker.engine.sequence``).

A message is numbered once, before its first attempt, and keeps its numbers through the retries. A send that failed
before anything was written gives its numbers back, so that a refused send leaves no gap; one that may have been
sent keeps them (if it was not, the gap is counted lost: the caller was told it may not have arrived).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

from celery.utils.nodenames import anon_nodename

from seqproc.models.events import Event
from seqproc.models.stamps import unique_id

#: ``(producer, number of the message's first event)``, one per message.
Place = tuple[str, int]


class Sequencer:
    """One sender's numbering (a process's threaded publisher, or one event loop's): its sends are one at a time."""

    def __init__(self) -> None:
        self._pid = 0
        self._next: dict[int, int] = {}
        self._lock = threading.Lock()
        self.producer = ""

    def number(self, messages: Sequence[tuple[int, Sequence[Event]]]) -> list[Place]:
        """Number the events of ``messages`` (``(partition, events)``, in the order they go); one place each."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child is a producer of its own, starting from 1
                self._pid, self._next = os.getpid(), {}
                self.producer = f"{anon_nodename()}/{unique_id()}"
            places: list[Place] = []
            for partition, group in messages:
                first = self._next.get(partition, 1)
                self._next[partition] = first + len(group)
                places.append((self.producer, first))
            return places

    def give_back(self, messages: Sequence[tuple[int, Sequence[Event]]], places: Sequence[Place]) -> None:
        """``messages`` were not sent at all: their numbers go to the next messages (if none was numbered since)."""
        with self._lock:
            for (partition, group), (producer, first) in zip(reversed(messages), reversed(places), strict=True):
                if producer == self.producer and self._next.get(partition) == first + len(group):
                    self._next[partition] = first
