"""The worker's lifecycle hooks: what the batcher tells its subscribers, once per flush or per partition batch.

The batcher (``worker.consume.batching``) fires four hooks, in this order for one flush:

- ``before_flush(FlushStarting)``: the owned partitions' events are about to be applied (one transaction);
- ``after_commit(Committed)``: that transaction committed; outcomes are not published nor messages acked yet (a
  process that dies here has its messages redelivered, and the ledger reports them as duplicates);
- ``after_settle(Settled)``: one partition's outcomes published and its messages acked: its events and their
  outcomes (applied, duplicate, rejected), the messages they came in;
- ``on_dead_letter(records)``: messages or events stored as dead letters on arrival (undecodable, not JSON, an
  unknown type, a field that fails the schema, the wrong partition), once committed. Events that fail when applied
  (and the later events of their parked key) are reported by ``after_settle``, with the reason ``dead_lettered``
  or ``parked``.

A subscriber is any object with one or more methods (or a module with functions) named after the hooks:
:meth:`Hooks.subscribe` adds each it has. Metrics, Flower's task events, Celery's tallies and fault injection are
subscribers, registered at the worker's start-up; users add their own through ``SEQPROC_HOOKS`` (comma-separated
``module`` or ``module:attribute``). A hook that raises is logged and the others still run: the batch is committed
by then, a hook can neither undo nor stop it. Hooks run in the consumer's thread, between batches: keep them quick.

A hook nobody subscribed costs nothing: the batcher looks at the (empty) list and builds no payload.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seqproc.models.domain import import_from_cwd
from seqproc.models.errors import ConfigError

if TYPE_CHECKING:
    from seqproc.models.events import Event
    from seqproc.models.outcomes import Outcome
    from seqproc.worker.consume.decode import Decoded
    from seqproc.worker.engine.apply import BatchResult, DeadLetterRecord, PartitionBatch

logger = logging.getLogger(__name__)

#: The hooks, in the order they fire for one flush.
HOOK_NAMES = ("before_flush", "after_commit", "after_settle", "on_dead_letter")


@dataclass(frozen=True, slots=True)
class FlushStarting:
    """``before_flush``: what the flush is about to apply in one transaction."""

    #: The partitions this worker owns among those held, in arrival order.
    partitions: tuple[int, ...]
    #: How many messages they came in.
    messages: int


@dataclass(frozen=True, slots=True)
class Committed:
    """``after_commit``: the transaction committed these partitions' batches."""

    #: Each partition's batch (partition, events, epoch, dead letters on arrival) and its result (outcomes, counts).
    batches: Sequence[tuple[PartitionBatch, BatchResult]]
    #: Seconds from the start of the flush to its commit.
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class Settled:
    """``after_settle``: one partition's events are committed, their outcomes published, their messages acked."""

    partition: int
    #: The events, in the order applied (those a replay brought back last), and each one's outcome.
    events: Sequence[Event]
    outcomes: Sequence[Outcome]
    #: The messages they came in (task id, partition, events, dead letters on arrival), in arrival order.
    messages: Sequence[Decoded]
    #: Seconds from the start of the flush to its commit.
    elapsed_s: float

    def applied(self) -> list[tuple[Event, Outcome]]:
        """The events applied (not duplicates, not rejected), each with its outcome."""
        return [(e, o) for e, o in zip(self.events, self.outcomes, strict=True) if o.status == "applied"]


BeforeFlush = Callable[[FlushStarting], object]
AfterCommit = Callable[[Committed], object]
AfterSettle = Callable[[Settled], object]
OnDeadLetter = Callable[["Sequence[DeadLetterRecord]"], object]


class Hooks:
    """The subscribers of one worker process, per hook, in the order they subscribed (owned by its runtime)."""

    def __init__(self) -> None:
        self.before_flush: list[BeforeFlush] = []
        self.after_commit: list[AfterCommit] = []
        self.after_settle: list[AfterSettle] = []
        self.on_dead_letter: list[OnDeadLetter] = []

    def __repr__(self) -> str:
        return "Hooks(" + ", ".join(f"{name}={len(getattr(self, name))}" for name in HOOK_NAMES) + ")"

    def add(self, name: str, subscriber: Callable[[Any], object]) -> None:
        """Subscribe ``subscriber`` to the hook ``name`` (one of :data:`HOOK_NAMES`)."""
        if name not in HOOK_NAMES:
            raise ValueError(f"no hook {name!r}: the hooks are {', '.join(HOOK_NAMES)}")
        getattr(self, name).append(subscriber)

    def subscribe(self, subscriber: object) -> int:
        """Subscribe each method (or function, for a module) of ``subscriber`` named after a hook; how many."""
        found = 0
        for name in HOOK_NAMES:
            method = getattr(subscriber, name, None)
            if callable(method):
                self.add(name, method)
                found += 1
        return found

    def fire(self, subscribers: Iterable[Callable[[Any], object]], payload: Any) -> None:
        """Call each of ``subscribers`` (one hook's list) with ``payload``; one that raises is logged, the others
        still run."""
        for subscriber in subscribers:
            try:
                subscriber(payload)
            except Exception:
                logger.exception("hook %r failed; the batch stands", subscriber)


def user_subscribers(names: Iterable[str]) -> list[object]:
    """The objects ``SEQPROC_HOOKS`` names: ``module`` (its functions named after hooks) or ``module:attribute``.
    One that cannot be imported, or subscribes to nothing, is a :class:`ConfigError` naming it."""
    found: list[object] = []
    for name in names:
        module_name, _, attribute = name.partition(":")
        try:
            subscriber: object = import_from_cwd(module_name)
        except ImportError as error:
            raise ConfigError(f"SEQPROC_HOOKS: cannot import {module_name!r}: {error}") from error
        if attribute:
            subscriber = getattr(subscriber, attribute, None)
            if subscriber is None:
                raise ConfigError(f"SEQPROC_HOOKS: {module_name!r} has no attribute {attribute!r}")
        if not any(callable(getattr(subscriber, hook, None)) for hook in HOOK_NAMES):
            raise ConfigError(f"SEQPROC_HOOKS: {name!r} has none of the hooks {', '.join(HOOK_NAMES)}")
        found.append(subscriber)
    return found


__all__ = [
    "HOOK_NAMES",
    "Committed",
    "FlushStarting",
    "Hooks",
    "Settled",
    "user_subscribers",
]
