"""Group commit for producer calls: concurrent calls share messages, and each returns once its event is published.

No background thread and no timer on the quiet path: a call that finds no publish under way publishes at once (it
is the *leader*). Calls that arrive while a publish is under way queue up; when it completes, the leader hands the
lead to the oldest of them, which publishes everything queued in one pipelined round trip (one message per
partition). Under load a message therefore carries all the events that arrived during the previous publish, with
no added wait; ``linger_ms`` adds a wait before each publish to gather more (a Kafka producer's linger).

Nothing is lost to buffering: a call returns only after the broker accepted its message, and raises
:class:`PublishError` (the event was not sent) otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from models.errors import PublishError
from models.events import Event


class _Ticket:
    """One call's events. ``wake`` is a lock held from the start: releasing it wakes the caller (cheaper than a
    threading.Event, which allocates a Condition and a lock per call)."""

    __slots__ = ("done", "error", "events", "wake")

    def __init__(self, events: Sequence[Event]) -> None:
        self.events = events
        self.wake = threading.Lock()
        self.wake.acquire()
        self.done = False
        self.error: PublishError | None = None


class Coalescer:
    """Turns concurrent ``submit`` calls into few ``send`` calls; thread-safe."""

    def __init__(self, send: Callable[[list[Event]], None], *, linger_s: float) -> None:
        self._send = send
        self._linger_s = linger_s
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list[_Ticket] = []
        self._busy = False
        #: Calls carried by the previous send: how many to expect when lingering.
        self._last_batch = 0
        self._lingering = False

    def submit(self, events: Sequence[Event]) -> None:
        """Publish ``events``, possibly together with other callers'; return once published."""
        ticket = _Ticket(events)
        with self._lock:
            self._pending.append(ticket)
            lead = not self._busy
            self._busy = True
            if self._lingering:
                self._arrived.notify()
        if not lead:
            ticket.wake.acquire()
            # Woken either because a leader published our events, or because we were handed the lead.
        if not ticket.done:
            self._lead(ticket)
        if ticket.error is not None:
            raise ticket.error

    def _lead(self, leader: _Ticket) -> None:
        with self._lock:
            expected = self._last_batch
            if self._linger_s and expected > 1 and len(self._pending) < expected:
                self._lingering = True
                self._arrived.wait_for(lambda: len(self._pending) >= expected, timeout=self._linger_s)
                self._lingering = False
            batch, self._pending = self._pending, []
            self._last_batch = len(batch)
        error: PublishError | None = None
        try:
            self._send([event for ticket in batch for event in ticket.events])
        except PublishError as failure:
            error = failure
        except Exception as failure:
            error = PublishError(f"publishing failed: {type(failure).__name__}: {failure}; the events were NOT sent")
        for ticket in batch:
            ticket.error = error
            ticket.done = True
            if ticket is not leader:
                ticket.wake.release()
        with self._lock:
            if self._pending:
                # Hand the lead to the oldest waiter: it publishes what queued up meanwhile.
                self._pending[0].wake.release()
            else:
                self._busy = False
