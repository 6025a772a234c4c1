"""What a producer call returns: where the event went, and a way to wait for its outcome."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis import RedisError

from seqproc.models.errors import OutcomeTimeout, OutcomeUnavailable, first_line
from seqproc.models.outcomes import Outcome, OutcomeStore
from seqproc.models.settings import mask_url
from seqproc.models.wire import queue_name

if TYPE_CHECKING:
    from seqproc.models.events import Event

#: The setting that names the result backend, for the errors that cannot read it.
RESULT_BACKEND_SETTING = "SEQPROC_RESULT_BACKEND"
#: What a failure to read an outcome is: the result backend could not be reached, or refused the read.
READ_ERRORS = (RedisError, OSError)

#: ``wait()`` without a timeout waits this long.
DEFAULT_WAIT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Receipt:
    """Proof that the broker accepted the event (it is durable as far as the broker is).

    ``idempotency_key`` is the key the ledger applies once; ``event_id`` names this very call.
    """

    idempotency_key: str
    event_id: str
    event_type: str
    partition: int
    queue: str
    stamp: int
    _store: OutcomeStore = field(repr=False, compare=False)

    @classmethod
    def of(cls, event: Event, partition: int, store: OutcomeStore) -> Receipt:
        """The receipt of ``event`` (validated, keyed, stamped), routed to ``partition``, whose outcome ``store``
        will hold: the one place a receipt is made, for the broker's sends and the outbox's rows alike."""
        return cls(
            idempotency_key=str(event.key),
            event_id=str(event.id),
            event_type=event.type,
            partition=partition,
            queue=queue_name(partition),
            stamp=int(event.stamp or 0),
            _store=store,
        )

    def wait(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> Outcome:
        """Block until the worker reports this event's outcome; raise :class:`OutcomeTimeout` after ``timeout_s``,
        :class:`OutcomeUnavailable` if the result backend cannot be read (the event was sent all the same)."""
        try:
            outcome = self._store.wait(self.event_id, timeout_s)
        except READ_ERRORS as error:
            raise outcomes_unavailable([self], error) from error
        if outcome is None:
            raise self.timed_out(timeout_s)
        return outcome

    def timed_out(self, timeout_s: float) -> OutcomeTimeout:
        """The error of a wait that got no outcome within ``timeout_s`` (here and in ``seqproc.aio``)."""
        return OutcomeTimeout(
            f"no outcome for {self.event_type} event {self.idempotency_key!r} (partition {self.partition}) within "
            f"{timeout_s:g} s; it was sent, and may still be queued or being applied: `seqproc status` shows whether a "
            f"worker consumes {self.queue}, `seqproc deadletter list` whether it was dead-lettered"
        )


def wait_all(receipts: Sequence[Receipt], timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> list[Outcome]:
    """The outcomes of many receipts, in order, with few round trips; :class:`OutcomeTimeout` names how many are
    missing when the time is up."""
    if not receipts:
        return []
    deadline = time.monotonic() + timeout_s
    outcomes: list[Outcome | None] = [None] * len(receipts)
    pending = list(range(len(receipts)))
    pause_s = 0.002
    while True:
        # Receipts of one call share a store; group anyway, receipts may come from several publishers.
        by_store: dict[int, list[int]] = {}
        for index in pending:
            by_store.setdefault(id(receipts[index]._store), []).append(index)
        for indexes in by_store.values():
            store = receipts[indexes[0]]._store
            for start in range(0, len(indexes), 1000):
                chunk = indexes[start : start + 1000]
                try:
                    found = store.get_many([receipts[i].event_id for i in chunk])
                except READ_ERRORS as error:
                    raise outcomes_unavailable([receipts[i] for i in pending], error) from error
                for index, outcome in zip(chunk, found, strict=True):
                    outcomes[index] = outcome
        pending = [index for index in pending if outcomes[index] is None]
        if not pending:
            return [outcome for outcome in outcomes if outcome is not None]
        if time.monotonic() >= deadline:
            raise outcomes_timed_out(receipts, pending, timeout_s)
        time.sleep(pause_s)
        pause_s = min(pause_s * 2, 0.1)


def outcomes_timed_out(receipts: Sequence[Receipt], pending: Sequence[int], timeout_s: float) -> OutcomeTimeout:
    """The error of a ``wait_all`` whose receipts at the indexes ``pending`` got no outcome within ``timeout_s``."""
    first = receipts[pending[0]]
    return OutcomeTimeout(
        f"{len(pending)} of {len(receipts)} events have no outcome after {timeout_s:g} s "
        f"(first: {first.event_type} {first.idempotency_key!r} on partition {first.partition}); they were sent, and "
        "may still be queued or being applied: `seqproc status` and `seqproc deadletter list` tell"
    )


def outcomes_unavailable(receipts: Sequence[Receipt], error: BaseException) -> OutcomeUnavailable:
    """The error of a wait that could not read the outcomes of ``receipts`` (their events were sent): the result
    backend did not answer, or refused the read (here and in ``seqproc.aio``)."""
    url = mask_url(getattr(receipts[0]._store, "url", ""))
    first = receipts[0]
    if len(receipts) == 1:
        sent = f"{first.event_type} event {first.idempotency_key!r} was sent (partition {first.partition})"
        again = "send it again only with the same idempotency key (then it is a duplicate, never a second event)"
    else:
        sent = f"{len(receipts)} events were sent (first: {first.event_type} {first.idempotency_key!r})"
        again = "send them again only with the same idempotency keys (then they are duplicates, never new events)"
    return OutcomeUnavailable(
        f"{sent}, but the outcome could not be read from {RESULT_BACKEND_SETTING}={url}: {first_line(error)}; {again}",
        setting=RESULT_BACKEND_SETTING,
        url=url,
        receipts=receipts,
    )
