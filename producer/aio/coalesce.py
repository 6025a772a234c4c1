"""Group commit for the calls of one event loop: :mod:`seqproc.producer.coalesce`'s semantics, on asyncio.

While a send is in flight, later calls queue; the next send carries them all (one message per partition, in one
pipelined round trip). A call that finds no send in flight starts one at once: a lone sequential caller never
waits for company. A call returns only once the broker accepted its events; a failed send raises
:class:`PublishError` to exactly the callers whose events it carried, and the sends after it go on. Each caller's
next call starts after its previous one returned, so each caller's events keep their order. ``linger_s`` as in the
threaded coalescer: when the previous send carried more than one call, the next waits until as many are queued
again, or ``linger_s``, whichever comes first.

What differs, because a coroutine is not a thread:

- a send runs in a task of its own, not in one of its callers: a caller cancelled while it waits (its client went
  away, a timeout) never interrupts a send that carries other callers' events. A cancelled caller whose events no
  send took yet leaves, unsent; one whose events are in flight gets its ``CancelledError``, and its events go anyway
  (a retry with the same idempotency key is then a duplicate);
- no lock and no chain of wake-ups: one loop runs one coroutine at a time (the queue changes only between awaits),
  and waking a future is a callback of the loop, not a thread woken to compete for the GIL;
- one send in flight at a time: the loop is free during its round trip, and the next send gathers meanwhile.

A coalescer belongs to one event loop (its futures and its task do): ``seqproc.producer.aio`` keeps one per loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from seqproc.models.errors import PublishError, SeqprocError
from seqproc.models.events import Event
from seqproc.producer.coalesce import latest_deadline


class _Ticket:
    """One call's events, its deadline and the future its caller awaits."""

    __slots__ = ("deadline", "events", "future")

    def __init__(self, events: Sequence[Event], future: asyncio.Future[None], deadline: float | None) -> None:
        self.events = events
        self.future = future
        self.deadline = deadline


class AsyncCoalescer:
    """Turns concurrent ``submit`` calls of one event loop into few ``send`` calls."""

    def __init__(self, send: Callable[[list[Event], float | None], Awaitable[None]], *, linger_s: float) -> None:
        self._send = send
        self._linger_s = linger_s
        self._pending: list[_Ticket] = []
        #: A sender task is running (set and cleared without an await in between checks: no call is stranded).
        self._sending = False
        #: Strong references to the sender tasks (the loop keeps only weak ones).
        self._tasks: set[asyncio.Task[None]] = set()
        #: Calls carried by the previous send: how many to expect when lingering.
        self._last_batch = 0
        self._expected = 0
        #: Set while the sender lingers: resolved once enough calls queued.
        self._arrived: asyncio.Future[None] | None = None
        #: Sends so far (tests and statistics).
        self.sends = 0

    async def submit(self, events: Sequence[Event], deadline: float | None = None) -> None:
        """Publish ``events``, possibly together with other calls of this loop; return once published. ``deadline``
        as the threaded coalescer's: a send tries until the latest of its calls'."""
        loop = asyncio.get_running_loop()
        ticket = _Ticket(events, loop.create_future(), deadline)
        self._pending.append(ticket)
        if not self._sending:
            self._sending = True
            task = loop.create_task(self._drain(), name="seqproc-aio-send")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        elif self._arrived is not None and len(self._pending) >= self._expected and not self._arrived.done():
            self._arrived.set_result(None)  # once, when enough have come
        try:
            await ticket.future
        except asyncio.CancelledError:
            if ticket in self._pending:  # no send took it: it leaves, unsent
                self._pending.remove(ticket)
            raise

    async def _drain(self) -> None:
        """Send what is queued, then what queued meanwhile, until nothing is; then the next call starts a sender."""
        try:
            while self._pending:
                await self._linger()
                batch, self._pending = self._pending, []
                if batch:  # its callers may all have been cancelled while it lingered
                    self._last_batch = len(batch)
                    await self._send_batch(batch)
        except BaseException:  # the sender itself was cancelled (the loop is closing): no caller may wait forever
            queued, self._pending = self._pending, []
            _settle(queued, PublishError("the sender was cancelled (the loop is closing); the events were NOT sent"))
            raise
        finally:
            self._sending = False

    async def _linger(self) -> None:
        expected = self._expected = self._last_batch
        if not self._linger_s or expected <= 1 or len(self._pending) >= expected:
            return
        loop = asyncio.get_running_loop()
        arrived = self._arrived = loop.create_future()
        timer = loop.call_later(self._linger_s, _resolve, arrived)
        try:
            await arrived
        finally:
            timer.cancel()
            self._arrived = None

    async def _send_batch(self, batch: list[_Ticket]) -> None:
        error: SeqprocError | None = None
        try:
            self.sends += 1
            await self._send(
                [event for ticket in batch for event in ticket.events], latest_deadline(t.deadline for t in batch)
            )
        except SeqprocError as failure:  # PublishError, PartitionCountMismatch: each caller hears it as it is
            error = failure
        except Exception as failure:  # every caller must hear of any failure
            error = PublishError(f"publishing failed: {type(failure).__name__}: {failure}; the events were NOT sent")
        except BaseException as failure:  # cancelled mid-send: tell the callers it carried
            error = PublishError(
                f"publishing was interrupted ({type(failure).__name__}); the events may or may not have been sent: "
                "send them again with the same idempotency keys"
            )
            _settle(batch, error)
            raise
        _settle(batch, error)


def _settle(tickets: list[_Ticket], error: SeqprocError | None) -> None:
    for ticket in tickets:
        if ticket.future.done():  # its caller was cancelled meanwhile
            continue
        if error is None:
            ticket.future.set_result(None)
        else:
            ticket.future.set_exception(error)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
