"""Apply a batch of one partition's events in ONE transaction, exactly once per idempotency key.

1. claim the batch's keys in the ledger (``INSERT ... ON CONFLICT DO NOTHING RETURNING``): keys already in the
   ledger (or earlier in the batch) are duplicates: they change nothing and report the first outcome of their key;
2. per domain (``seqproc.Domain``): ``load`` the touched keys' states once, ``apply`` each new event in order in
   memory, ``save`` the states an applied event changed once;
3. write the outcomes, the dead letters, the partition's counters, and check its fencing epoch, last (a worker that
   lost the partition cannot commit).
The caller commits, then acks. This module knows nothing of Celery: it takes a connection and events.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from seqproc.models.db import pipeline
from seqproc.models.domain import Applied, BatchContext, Domain, reset_batch_context, set_batch_context
from seqproc.models.errors import InvalidEvent, PartitionFenced
from seqproc.models.events import Event, Replay, parse_event
from seqproc.models.outcomes import Outcome, Status
from seqproc.models.wire import queue_name
from seqproc.worker.engine.sequence import Sequenced, advance, fill_late, streams_of
from seqproc.worker.engine.store import DeadLetterRecord, Fence, Loaded, Store, Writes, store_for
from seqproc.worker.ops.logs import log_event

logger = logging.getLogger(__name__)

__all__ = [
    "PARKED",
    "BatchResult",
    "DeadLetterRecord",
    "PartitionBatch",
    "apply_batch",
    "apply_partitions",
    "park",
    "store_dead_letters",
]


@dataclass
class BatchResult:
    #: One outcome per event of the batch, in order.
    outcomes: list[Outcome] = field(default_factory=list)
    applied: int = 0
    duplicates: int = 0
    rejected: int = 0
    #: Dead-lettered events applied by a replay in this batch (not part of any message): their outcomes too.
    replayed: list[tuple[Event, Outcome]] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        """Append ``other``'s outcomes and counts (a batch applied in pieces)."""
        self.outcomes.extend(other.outcomes)
        self.replayed.extend(other.replayed)
        self.applied += other.applied
        self.duplicates += other.duplicates
        self.rejected += other.rejected

    def count(self, outcome: Outcome) -> None:
        if outcome.status == "applied":
            self.applied += 1
        elif outcome.status == "duplicate":
            self.duplicates += 1
        else:
            self.rejected += 1


@dataclass(frozen=True)
class PartitionBatch:
    """The events of one partition, in the order received, with the epoch this worker holds for it (None: no fence
    check, for tools and tests applying directly) and what could not be decoded, to be stored alongside."""

    partition: int
    events: Sequence[Event]
    epoch: int | None
    dead_letters: Sequence[DeadLetterRecord] = ()
    #: The messages' places in their producers' sequences, in the order received (loss detection).
    sequences: Sequence[Sequenced] = ()


@dataclass(frozen=True)
class _Planned:
    event: Event
    #: Which batch, and which of its events (None: a dead letter brought back by a replay).
    batch: int
    position: int | None
    dead_letter_id: int | None = None


def apply_batch(
    conn: Connection,
    partition: int,
    events: Sequence[Event],
    *,
    epoch: int | None,
    dead_letters: Sequence[DeadLetterRecord] = (),
    sequences: Sequence[Sequenced] = (),
) -> BatchResult:
    """Apply the events of one partition inside the caller's transaction; see :func:`apply_partitions`."""
    return apply_partitions(conn, [PartitionBatch(partition, events, epoch, dead_letters, sequences)])[0]


def apply_partitions(
    conn: Connection, batches: Sequence[PartitionBatch], *, reservation_ttl_s: int | None = None
) -> list[BatchResult]:
    """Apply several partitions' batches inside the caller's ONE transaction; one outcome per event, per batch.

    Keys never cross partitions and neither do articles or products, so the partitions are independent; sharing the
    transaction (and its round trips and its commit) is what makes many small batches cheap. Raises
    :class:`PartitionFenced` naming every partition whose epoch is no longer current: roll back then.

    Parked entities (an earlier event of theirs failed for good): their new events are dead-lettered, in order, and
    their ledger claims given back. A ``replay`` event brings an entity's dead letters back at its place in the
    stream, oldest first, then unparks it.

    The steps, each a function below: plan the order (:func:`_plan`), claim the keys (:func:`_claim`), decide the
    control events and the parked entities' events (:func:`_triage`), run the domains over the rest
    (:func:`_run_domains`: load, apply, save), report an outcome per event (:func:`_report`), then write the
    outcomes and check the fences (:func:`_write`).
    """
    store = store_for(conn)
    token = set_batch_context(BatchContext(reservation_ttl_s=reservation_ttl_s))
    try:
        plan = _plan(conn, store, batches)
        claim = _claim(conn, store, batches, plan)
        writes = Writes()
        decided, to_apply = _triage(claim, batches, plan, writes)
        applied, changed = _run_domains(conn, claim, to_apply)
        decided.update(applied)
        results = _report(plan, claim, decided, len(batches), _conflicts(claim, decided))
        writes.outcomes = [
            (claim.keys[i], outcome)
            for i, outcome in decided.items()
            if (outcome.status != "applied" or outcome.reason is not None) and claim.keys[i] not in writes.unclaim
        ]
        _move_sequences(conn, batches, claim.positions, writes)
        _write(conn, store, batches, results, writes, changed)
    finally:
        reset_batch_context(token)
    return results


@dataclass
class _Claim:
    """The planned events with their ledger keys, and what the ledger and the tables said of them."""

    events: list[Event]
    #: Each planned event's ledger key (a property that formats a string: computed once per event).
    keys: list[str]
    #: Where each key first appears: later events with the same key are duplicates of that one.
    first_index: dict[str, int]
    #: The first event of each key, in order: the ones that may be new.
    candidates: list[int]
    loaded: Loaded
    #: Outcomes recorded by earlier transactions for the keys that were already in the ledger.
    seen_before: dict[str, Outcome]
    #: States loaded with the claim, by domain, for the domains whose loads can join its round trip.
    preloaded: dict[int, dict[Any, Any]] = field(default_factory=dict)
    #: Where the producers' sequences of the batches' messages stood (loaded with the claim too).
    positions: dict[tuple[str, int], int] = field(default_factory=dict)


def _claim(conn: Connection, store: Store, batches: Sequence[PartitionBatch], plan: Sequence[_Planned]) -> _Claim:
    """Claim every key once in the ledger (and see which entities are parked); the built-in domains load the state
    of every key the batch's events touch in the same round trip (on PostgreSQL, one pipeline; keys of duplicates
    included: a few rows read for nothing, a round trip saved). Then read the first outcomes of the keys that were
    in the ledger already (duplicates report them)."""
    events = [item.event for item in plan]
    keys = [event.ledger_key for event in events]
    first_index: dict[str, int] = {}
    for index, key in enumerate(keys):
        first_index.setdefault(key, index)
    candidates = sorted(first_index.values())
    grouped = _by_domain(events, candidates)
    if len(candidates) < len(events):  # copies in the batch: a domain's conflict hook reads their keys' states too
        every = _by_domain(events, range(len(events)))
        grouped = {domain: every[domain] if domain.conflict else of for domain, of in grouped.items()}
    loading = {}
    streams = streams_of((batch.partition, batch.sequences) for batch in batches)
    with pipeline(conn):
        positions = store.load_sequences(conn, streams) if streams else lambda: {}
        loaded = store.claim(
            conn,
            [(keys[i], events[i].type, batches[plan[i].batch].partition) for i in candidates],
            sorted({e.entity_key for e in events}),
        )
        for domain, indexes in grouped.items():
            if domain.pipelined:
                domain_events = [events[i] for i in indexes]
                keys_of = list(dict.fromkeys(getattr(event, domain.key) for event in domain_events))
                loading[id(domain)] = domain.start_loading(conn, keys_of, domain_events)
    claimed = loaded()
    preloaded = {domain_id: finish() for domain_id, finish in loading.items()}
    stood = positions()
    seen_before = store.first_outcomes(conn, [keys[i] for i in candidates if keys[i] not in claimed.new_keys])
    return _Claim(events, keys, first_index, candidates, claimed, seen_before, preloaded, stood)


def _by_domain(events: Sequence[Event], indexes: Sequence[int]) -> dict[Domain, list[int]]:
    """``indexes`` grouped by the domain of their event, in order (control events, which no domain applies, out)."""
    grouped: dict[Domain, list[int]] = {}
    for index in indexes:
        event = events[index]
        if not isinstance(event, Replay):
            grouped.setdefault(type(event).domain, []).append(index)
    return grouped


def _triage(
    claim: _Claim, batches: Sequence[PartitionBatch], plan: Sequence[_Planned], writes: Writes
) -> tuple[dict[int, Outcome], list[int]]:
    """Decide what needs no rule: control events (replay, reconcile) and the events of parked entities (they are
    dead-lettered behind the event that parked them). Returns those outcomes by position, and the positions of the
    new domain events left to apply, in order."""
    parked = set(claim.loaded.parked)
    decided: dict[int, Outcome] = {}
    to_apply: list[int] = []
    for index in claim.candidates:
        event, key = claim.events[index], claim.keys[index]
        if key not in claim.loaded.new_keys:
            continue
        if isinstance(event, Replay):
            parked.discard(event.entity)
            writes.unpark.append(event.entity)
            brought = [
                p.dead_letter_id for p in plan if p.dead_letter_id is not None and p.event.entity_key == event.entity
            ]
            writes.replayed.extend(d for d in brought if d is not None)
            decided[index] = Outcome("applied", f"replayed {len(brought)}")
        elif parked and event.entity_key in parked:
            decided[index] = PARKED
            writes.unclaim.append(key)
            writes.dead_letters = [*writes.dead_letters, _parked_letter(event, batches[plan[index].batch].partition)]
        else:
            to_apply.append(index)
    return decided, to_apply


def _run_domains(
    conn: Connection, claim: _Claim, to_apply: Sequence[int]
) -> tuple[dict[int, Outcome], list[tuple[Domain, dict[Any, Any]]]]:
    """Per domain: the states of the keys its new events touch (loaded with the claim, or now), each event applied
    in order; returns the outcomes by position, and per domain the states an applied event changed, to save.
    Domains never share a key, so each runs on its own; an exception (a broken rule) fails the transaction, and the
    caller finds the event at fault."""
    decided: dict[int, Outcome] = {}
    changed_by_domain: list[tuple[Domain, dict[Any, Any]]] = []
    for domain, indexes in _by_domain(claim.events, to_apply).items():
        events = [claim.events[i] for i in indexes]
        states = claim.preloaded.get(id(domain))
        if states is None:
            states = domain.load_states(conn, list(dict.fromkeys(getattr(e, domain.key) for e in events)), events)
        changed: dict[Any, Any] = {}
        for index, event in zip(indexes, events, strict=True):
            key = getattr(event, domain.key)
            decision = domain.apply_event(states[key], event)
            if isinstance(decision, Applied):
                decided[index] = _outcome("applied", decision.reason)
                changed[key] = states[key]
            else:
                decided[index] = _outcome("rejected", decision.reason)
                if decision.changed:
                    changed[key] = states[key]
        changed_by_domain.append((domain, changed))
    return decided, changed_by_domain


#: Outcomes are immutable: one object per (status, reason) serves every event that ends so (bounded: reasons are
#: the domains' own words, a handful each).
_OUTCOMES: dict[tuple[Status, str | None], Outcome] = {}


def _outcome(status: Status, reason: str | None) -> Outcome:
    outcome = _OUTCOMES.get((status, reason))
    if outcome is None:
        outcome = Outcome(status, reason)
        if len(_OUTCOMES) < 1024:
            _OUTCOMES[status, reason] = outcome
    return outcome


def _conflicts(claim: _Claim, decided: dict[int, Outcome]) -> dict[int, Outcome]:
    """The events whose key was applied before (earlier in the batch, or by an earlier transaction) that their
    domain's ``conflict`` hook finds are not copies of that event (a reservation id used again on another product),
    by position: rejected with the hook's reason. Not written to the ledger: the key's outcome stays the first's."""
    found: dict[int, Outcome] = {}
    if len(decided) == len(claim.events):  # no duplicates (most batches)
        return found
    for index, event in enumerate(claim.events):
        if index in decided or isinstance(event, Replay):
            continue
        domain = type(event).domain
        hook = domain.conflict
        if hook is None:
            continue
        first_index = claim.first_index[claim.keys[index]]
        first = claim.events[first_index] if first_index != index else None
        verdict = hook(claim.preloaded.get(id(domain), {}).get(getattr(event, domain.key)), event, first)
        if verdict is not None:
            found[index] = _outcome("rejected", verdict.reason)
    return found


def _report(
    plan: Sequence[_Planned],
    claim: _Claim,
    decided: dict[int, Outcome],
    batch_count: int,
    conflicts: dict[int, Outcome] | None = None,
) -> list[BatchResult]:
    """One outcome per planned event, per batch: decided above, a conflict (:func:`_conflicts`), or a duplicate of
    its key's first outcome."""
    results = [BatchResult() for _ in range(batch_count)]
    conflicts = conflicts or {}
    for index, item in enumerate(plan):
        key = claim.keys[index]
        if index in decided:
            outcome = decided[index]
        elif index in conflicts:
            outcome = conflicts[index]
        else:
            outcome = Outcome("duplicate", first=decided.get(claim.first_index[key]) or claim.seen_before.get(key))
        result = results[item.batch]
        result.count(outcome)
        if item.position is None:
            result.replayed.append((item.event, outcome))
        else:
            result.outcomes.append(outcome)
    return results


def _move_sequences(
    conn: Connection, batches: Sequence[PartitionBatch], positions: dict[tuple[str, int], int], writes: Writes
) -> None:
    """Move the producers' sequences past the messages of each batch (from where the claim found them), in the
    transaction: written with the other writes; a gap is logged now and counted lost if it is still open after the
    grace (``worker.engine.sequence``)."""
    moves = advance(positions, ((batch.partition, batch.sequences) for batch in batches))
    if moves.late:
        fill_late(conn, moves)  # before this transaction's own gaps are written, as they were found
    writes.sequences = [(producer, partition, n) for (producer, partition), n in moves.next_seqs.items()]
    writes.gaps = [(g.producer, g.partition, g.first, g.count) for g in moves.gaps]
    for gap in moves.gaps:
        logger.warning(
            "partition %d: events %d-%d of producer %s did not come before later ones (a broker failover may "
            "have dropped them); counted lost unless they arrive within the grace",
            gap.partition,
            gap.first,
            gap.first + gap.count - 1,
            gap.producer,
        )


def _write(
    conn: Connection,
    store: Store,
    batches: Sequence[PartitionBatch],
    results: Sequence[BatchResult],
    writes: Writes,
    changed: Sequence[tuple[Domain, dict[Any, Any]]] = (),
) -> None:
    """Save what the domains changed, then write the outcomes, dead letters and counters and check every
    partition's fence, last. The built-in domains' saves join the framework's writes in one round trip (one
    pipeline); a user domain's save runs before, on its own (its statements are its own business)."""
    for domain, states in changed:
        if not domain.pipelined:
            domain.save_states(conn, states)
    writes.fences = [
        Fence(batch.partition, batch.epoch, result.applied, result.duplicates, result.rejected)
        for batch, result in zip(batches, results, strict=True)
    ]
    writes.dead_letters = [*(record for batch in batches for record in batch.dead_letters), *writes.dead_letters]
    with pipeline(conn):
        for domain, states in changed:
            if domain.pipelined:
                domain.save_states(conn, states)
        written = store.write(conn, writes)
    fenced = written()
    if fenced:
        epochs = {batch.partition: batch.epoch for batch in batches}
        raise PartitionFenced(
            "; ".join(f"partition {p}: epoch {epochs[p]} is no longer current, another worker owns it" for p in fenced),
            partitions=fenced,
        )
    _log_dead_letters(writes.dead_letters)


#: The outcome of an event of a parked entity: kept in the dead-letter store until a replay applies it.
PARKED = Outcome("rejected", "parked")


def _plan(conn: Connection, store: Store, batches: Sequence[PartitionBatch]) -> list[_Planned]:
    """The events in the order to apply them: as received, except that a replay of entity K is followed by K's dead
    letters (oldest first) and then by K's events that came earlier in this batch (they would have been parked)."""
    replays = sorted({e.entity for b in batches for e in b.events if isinstance(e, Replay)})
    dead, parked = store.load_replay(conn, replays) if replays else ({}, set())
    plan: list[_Planned] = []
    for n, batch in enumerate(batches):
        out: list[_Planned] = []
        for position, event in enumerate(batch.events):
            item = _Planned(event, n, position)
            if not isinstance(event, Replay):
                out.append(item)
                continue
            entity = event.entity
            earlier = [p for p in out if p.event.entity_key == entity and not isinstance(p.event, Replay)]
            if entity in parked:
                out = [p for p in out if p not in earlier]
            else:
                earlier = []
            out.append(item)
            for dead_id, body in dead.get(entity, []):
                try:
                    brought = parse_event(json.loads(body))
                except (ValueError, InvalidEvent):
                    continue  # not a valid event (a malformed message): it stays a dead letter
                if brought.entity_key == entity and not isinstance(brought, Replay):
                    out.append(_Planned(brought, n, None, dead_id))
            out.extend(earlier)
        plan.extend(out)
    return plan


def _parked_letter(event: Event, partition: int) -> DeadLetterRecord:
    return _event_letter(
        event,
        partition,
        f"{event.entity_key} is parked (an earlier event of it failed); replay it with "
        f"`seqproc deadletter replay {event.entity_key}` once the cause is fixed",
    )


def _event_letter(event: Event, partition: int, error: str) -> DeadLetterRecord:
    """The dead letter of a valid event: its JSON, its keys, the partition it came from."""
    return DeadLetterRecord(
        error=error,
        body=event.model_dump_json(),
        partition=partition,
        queue=queue_name(partition),
        event_key=event.key,
        content_type="application/json",
        entity_key=event.entity_key,
    )


def park(conn: Connection, partition: int, epoch: int | None, event: Event, error: BaseException) -> DeadLetterRecord:
    """Dead-letter ``event`` (it failed for a reason other than a transient error) and park its entity, so that its
    later events wait in order behind it instead of overtaking it. Other entities flow on."""
    record = _event_letter(event, partition, f"apply failed: {type(error).__name__}: {error}"[:2000])
    writes = Writes(
        fences=[Fence(partition, epoch, rejected=1)],
        dead_letters=[record],
        park=[(event.entity_key, partition, record.error)],
    )
    fenced = store_for(conn).write(conn, writes)()
    if fenced:
        raise PartitionFenced(f"partition {partition}: epoch {epoch} is no longer current", partitions=fenced)
    _log_dead_letters([record])
    return record


def store_dead_letters(conn: Connection, records: Sequence[DeadLetterRecord]) -> None:
    """Keep what could not be applied, with its raw body and error, until someone replays or discards it."""
    if records:
        store_for(conn).store_dead_letters(conn, records)
        _log_dead_letters(records)


def _log_dead_letters(records: Sequence[DeadLetterRecord]) -> None:
    for record in records:
        log_event(
            logger,
            logging.WARNING,
            outcome="dead_letter_stored",
            partition=record.partition,
            queue=record.queue,
            key=record.entity_key,
            idempotency_key=record.event_key,
            error=record.error,
        )
