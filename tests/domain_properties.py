"""Property tests for any domain written on seqproc's API (:class:`seqproc.Domain`): duplicates, batch boundaries
and redelivery of a stream of events end in the state of applying it once, in order.

Running it on your own domain
-----------------------------
This module needs only seqproc, SQLAlchemy, hypothesis and pytest; copy it into your tests (or import it from a
seqproc checkout as ``tests.domain_properties``). Give it your domain, a strategy of the calls your application
makes, and a function that reads the state your rules decide::

    import pytest
    from hypothesis import given, strategies as st
    from sqlalchemy import select

    from myapp.wallet import WALLETS, Deposit, Withdraw, wallet  # your Domain, its events, its table
    from tests.domain_properties import PROPERTY_SETTINGS, Call, DomainCase, check_domain, sqlite_database, streams

    accounts = st.sampled_from([1, 1, 1, 2])                      # a hot key, and another
    CASE = DomainCase(
        wallet,
        streams(st.one_of(
            st.builds(Deposit, account_id=accounts, amount=st.integers(1, 50)),
            st.builds(Withdraw, account_id=accounts, amount=st.integers(1, 80)),
            # a client that retries with its request id (a request is for one account): a duplicate
            accounts.flatmap(lambda a: st.builds(
                Call, st.builds(Deposit, account_id=st.just(a), amount=st.integers(1, 50)),
                idempotency_key=st.sampled_from([f"req-{a}-1", f"req-{a}-2"]))),
        )),
        read_state=lambda conn, keys: sorted(conn.execute(
            select(WALLETS.c.account_id, WALLETS.c.balance).where(WALLETS.c.account_id.in_(keys))).all()),
        schema=WALLETS.metadata.create_all,  # your tables, if seqproc's migrations do not make them (idempotent)
    )

    @pytest.fixture
    def engine(tmp_path):
        engine = sqlite_database(tmp_path)                        # seqproc's Alembic migrations, as `seqproc migrate`
        yield engine
        engine.dispose()

    @PROPERTY_SETTINGS
    @given(data=st.data())
    def test_wallet_is_applied_exactly_once_in_order(engine, data):
        check_domain(engine, CASE, data)

``streams`` turns each drawn call into the event ``seqproc.send`` would send: validated, keyed (the caller's
idempotency key, the one its fields imply, or its own id), given a unique id and this process's next ordering stamp,
in the order drawn. ``check_domain`` runs on any engine the migrations made (a PostgreSQL test database too); it
empties every table (but the migrations' versions and the partitions' epochs) before each run, so give it a
database of its own.

What one example checks
-----------------------
Hypothesis draws a stream from ``case.streams``, then how a worker may receive it:

- **duplicates**: some events sent again (the same event: same idempotency key, same id), each copy at a random
  later place, in the same batch as its original or a later one (a producer's resend, a lost ack);
- **batch boundaries**: the entities routed to 1 to ``case.max_partitions`` partitions (any assignment: each entity
  to one partition, as ``crc32(entity key)`` does), each partition's queue cut into batches of random sizes, and each
  transaction applying the next batch of one or several partitions (:func:`apply_partitions`, as a worker's flush);
- **redelivery**: some batches, already applied and committed, applied again later, whole (a message whose ack was
  lost, handed back by the broker); some transactions applied and rolled back first, then applied again (a worker
  that died before its commit); and at the end the whole stream once more.

Then it applies the stream (a) once, in order, one event per batch and transaction: *the reference*; and (b) as
received above, on the emptied database; and asserts:

1. the reference's first event of each idempotency key is applied or rejected, and a later event of the same key
   (a caller's retry with its request id) is ``Outcome("duplicate", first=<the first one's outcome>)``;
2. in (b), the first application of each key has the reference's outcome for that key, every later one (the copies,
   the redelivered batches, the whole stream again) is ``Outcome("duplicate", first=<that outcome>)``, and each
   batch's counts (applied, duplicates, rejected) add up to its outcomes;
3. ``case.read_state(conn, keys)`` (``keys``: the domain's key values the stream names, in order) is equal after
   (a) and after (b), and so are the ledger's rows (key, status, reason);
4. ``case.invariants(conn)``, if given, reports nothing after every committed transaction of (a) and of (b).

The stream must be what a producer sends: events of ``case.domain``, stamps rising, and events sharing an
idempotency key (retries) naming the same entity; the harness says so when a strategy breaks this.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from sqlalchemy import Connection, Engine, delete, inspect, select
from sqlalchemy import table as table_named

from seqproc.migrations import migrate
from seqproc.models.db import make_engine
from seqproc.models.domain import Domain, EventModel
from seqproc.models.outcomes import Outcome
from seqproc.models.tables.base import table_of
from seqproc.models.tables.ledger import LedgerEntry
from seqproc.producer.build import stamp_event
from seqproc.worker.engine.apply import BatchResult, PartitionBatch, apply_partitions

__all__ = [
    "PROPERTY_SETTINGS",
    "Call",
    "DomainCase",
    "check_domain",
    "empty_database",
    "sqlite_database",
    "streams",
]

#: As many examples as the hypothesis profile in force says (hypothesis's default: 100; this repository's profiles,
#: in tests/conftest.py: 40 in CI and by default, 200 under ``make soak``); each applies its stream twice and more.
PROPERTY_SETTINGS = settings(
    deadline=None,
    # One database per test, emptied before each run of each example (check_domain does it).
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)

#: Most copies of one event (besides the original) in a delivery.
MAX_COPIES = 2

LEDGER = table_of(LedgerEntry)

# --------------------------------------------------------------------------------------------------- streams


@dataclass(frozen=True)
class Call:
    """One call of application code: ``seqproc.send(event, idempotency_key=...)``. A bare event in a strategy is a
    call without a key (a new event each time)."""

    event: EventModel
    idempotency_key: str | None = None


def produce(calls: Iterable[EventModel | Call]) -> list[EventModel]:
    """The events ``seqproc.send`` makes of ``calls``, in order: keyed, given ids and rising stamps."""
    events = []
    for call in calls:
        if isinstance(call, Call):
            events.append(stamp_event(call.event, idempotency_key=call.idempotency_key))
        else:
            events.append(stamp_event(call))
    return events


def streams(
    calls: SearchStrategy[EventModel] | SearchStrategy[Call] | SearchStrategy[EventModel | Call],
    *,
    min_size: int = 1,
    max_size: int = 30,
) -> SearchStrategy[list[EventModel]]:
    """Streams of ``min_size`` to ``max_size`` events as the producer sends them, one per drawn call."""
    return st.lists(calls, min_size=min_size, max_size=max_size).map(produce)


# --------------------------------------------------------------------------------------------------- the case


@dataclass(frozen=True)
class DomainCase:
    """A domain under test: its streams, how to read its state, and optionally its invariants and tables."""

    domain: Domain
    streams: SearchStrategy[list[EventModel]]
    #: ``read_state(conn, keys)``: what the rules decided for these key values, as a comparable value (rows
    #: without timestamps, sorted). Two runs that should agree must give equal values.
    read_state: Callable[[Connection, list[Any]], Any]
    #: ``invariants(conn)``: one line per broken invariant (empty: all hold); checked after every commit.
    invariants: Callable[[Connection], Sequence[str]] | None = None
    #: ``schema(conn)``: create the domain's own tables when seqproc's migrations do not; must be idempotent
    #: (``MetaData.create_all`` is); called before each run.
    schema: Callable[[Connection], None] | None = None
    #: The stream is routed over 1 to this many partitions (drawn per example).
    max_partitions: int = 4


@dataclass(frozen=True)
class _Delivery:
    """How the stream reached the worker: per transaction, the (partition, batch) pairs it applied together."""

    partitions: int
    #: Each entity's partition.
    partition_of: dict[str, int]
    transactions: list[list[tuple[int, list[EventModel]]]]
    #: The numbers of the transactions first applied and rolled back (their worker died before its commit).
    rolled_back: set[int]


def check_domain(engine: Engine, case: DomainCase, data: st.DataObject) -> None:
    """Draw a stream and a delivery of it, apply both ways, assert what the module docstring lists."""
    stream = data.draw(case.streams, label="stream")
    _check_stream(case, stream)
    delivery = _draw_delivery(data, stream, case.max_partitions)
    keys = list(dict.fromkeys(getattr(event, case.domain.key) for event in stream))

    # (a) the reference: once, in order, one event per batch and transaction.
    empty_database(engine, case.schema)
    first: dict[str, Outcome] = {}
    for position, event in enumerate(stream):
        (result,) = _commit(engine, case, [(delivery.partition_of[event.entity_key], [event])])
        (outcome,) = result.outcomes
        key = event.ledger_key
        if key in first:
            _expect(
                outcome == Outcome("duplicate", first=first[key]),
                f"reference, event {position} {event!r}: "
                f"a retry of key {key!r} gave {outcome!r}, not a duplicate of {first[key]!r}",
            )
        else:
            _expect(
                outcome.status != "duplicate",
                f"reference, event {position} {event!r}: first of its key {key!r}, reported {outcome!r}",
            )
            first[key] = outcome
    expected_state, expected_ledger = _read(engine, case, keys)

    # (b) duplicated, cut into batches over partitions, redelivered.
    empty_database(engine, case.schema)
    applied: set[str] = set()
    for number, transaction in enumerate(delivery.transactions):
        if number in delivery.rolled_back:
            _roll_back(engine, case, transaction)
        results = _commit(engine, case, transaction)
        for (partition, batch), result in zip(transaction, results, strict=True):
            where = f"transaction {number}, partition {partition}"
            _expect(len(result.outcomes) == len(batch), f"{where}: {len(result.outcomes)} outcomes for {len(batch)}")
            for event, outcome in zip(batch, result.outcomes, strict=True):
                key = event.ledger_key
                want = Outcome("duplicate", first=first[key]) if key in applied else first[key]
                _expect(outcome == want, f"{where}, {event!r}: {outcome!r}, expected {want!r}")
                applied.add(key)
            counts = (result.applied, result.duplicates, result.rejected)
            statuses = tuple(sum(o.status == s for o in result.outcomes) for s in ("applied", "duplicate", "rejected"))
            _expect(counts == statuses, f"{where}: counted {counts}, outcomes say {statuses}")
    _expect(applied == set(first), f"keys never applied: {sorted(set(first) - applied)}")
    state, ledger = _read(engine, case, keys)
    _describe(stream, first, delivery)
    _expect(
        state == expected_state,
        f"state after {len(delivery.transactions)} transactions over {delivery.partitions} partition(s) differs "
        f"from applying the stream once, in order:\n  once, in order: {expected_state!r}\n  as delivered:   {state!r}",
    )
    _expect(ledger == expected_ledger, f"ledger differs:\n  once: {expected_ledger!r}\n  delivered: {ledger!r}")


def _describe(stream: Sequence[EventModel], first: dict[str, Outcome], delivery: _Delivery) -> None:
    """What the examples covered (``pytest --hypothesis-show-statistics``)."""
    hypothesis.event(f"stream of {'1' if len(stream) == 1 else '2-9' if len(stream) < 10 else '10+'} event(s)")
    hypothesis.event(f"some first outcome rejected: {any(o.status == 'rejected' for o in first.values())}")
    hypothesis.event(f"a retry (one key, two events) in the stream: {len(first) < len(stream)}")
    hypothesis.event(f"{delivery.partitions} partition(s)")
    hypothesis.event(f"a transaction of several partitions: {any(len(t) > 1 for t in delivery.transactions[:-1])}")
    sizes = [len(batch) for t in delivery.transactions[:-1] for _, batch in t]
    hypothesis.event(f"a batch of several events: {max(sizes) > 1}")
    hypothesis.event(f"a transaction rolled back, then delivered again: {bool(delivery.rolled_back)}")


def _check_stream(case: DomainCase, stream: Sequence[EventModel]) -> None:
    """The stream must be one a producer sends; a strategy that breaks this is told how."""
    entity_of: dict[str, str] = {}
    last_stamp = 0
    for position, event in enumerate(stream):
        if type(event).domain is not case.domain:
            raise ValueError(f"stream event {position}: {event.type} is not an event of {case.domain!r}")
        if event.stamp is None or event.key is None or event.id is None:
            raise ValueError(
                f"stream event {position}: not sent yet (no key, id or stamp): build streams with streams()"
            )
        if event.stamp <= last_stamp:
            raise ValueError(f"stream event {position}: stamps must rise along the stream, as a producer's do")
        last_stamp = event.stamp
        known = entity_of.setdefault(event.ledger_key, event.entity_key)
        if known != event.entity_key:
            raise ValueError(
                f"stream event {position}: idempotency key {event.ledger_key!r} names {known} and "
                f"{event.entity_key}; a key is one event (its retries name the same entity): draw keys per entity"
            )


def _draw_delivery(data: st.DataObject, stream: Sequence[EventModel], max_partitions: int) -> _Delivery:
    # Routing: any assignment of entities to partitions is one a deployment may have (crc32 over some count):
    # drawn, so that hot entities share a partition in some examples and not in others.
    # (sampled_from draws evenly; small integers lean to their bounds)
    partitions = data.draw(st.sampled_from(range(1, max_partitions + 1)), label="partitions")
    entities = list(dict.fromkeys(e.entity_key for e in stream))
    routes = data.draw(
        st.lists(st.sampled_from(range(partitions)), min_size=len(entities), max_size=len(entities)), label="routes"
    )
    partition_of = dict(zip(entities, routes, strict=True))
    # Duplicates: each copy somewhere after its original (the producer's resend, a redelivered message).
    sent = list(stream)
    copies = data.draw(st.lists(st.integers(0, MAX_COPIES), min_size=len(stream), max_size=len(stream)), label="copies")
    for event, count in zip(stream, copies, strict=True):
        for _ in range(count):
            original = next(i for i, e in enumerate(sent) if e is event)
            sent.insert(data.draw(st.integers(original + 1, len(sent)), label="copy at"), event)
    # Each partition's queue, in the order sent, cut into batches; some batches delivered again later, whole.
    queues: dict[int, deque[list[EventModel]]] = {}
    for partition in sorted(set(partition_of.values())):
        queue = [e for e in sent if partition_of[e.entity_key] == partition]
        cuts = data.draw(st.lists(st.booleans(), min_size=len(queue) - 1, max_size=len(queue) - 1), label="cuts")
        batches: list[list[EventModel]] = [[queue[0]]]
        for event, cut in zip(queue[1:], cuts, strict=True):
            if cut:
                batches.append([event])
            else:
                batches[-1].append(event)
        again = data.draw(st.lists(st.booleans(), min_size=len(batches), max_size=len(batches)), label="redeliver")
        for batch, redeliver in zip(list(batches), again, strict=True):
            if redeliver:
                original = next(i for i, b in enumerate(batches) if b is batch)
                batches.insert(data.draw(st.integers(original + 1, len(batches)), label="redelivered at"), list(batch))
        queues[partition] = deque(batches)
    # Transactions: the next batch of one or several partitions each, as a worker's flush takes them.
    transactions: list[list[tuple[int, list[EventModel]]]] = []
    rolled_back: set[int] = set()
    while queues:
        pending = sorted(queues)
        chosen = pending  # a busy worker's flush: every partition with messages waiting
        if not data.draw(st.booleans(), label="all waiting partitions together"):
            taken = data.draw(st.lists(st.booleans(), min_size=len(pending), max_size=len(pending)), label="together")
            chosen = [p for p, take in zip(pending, taken, strict=True) if take] or pending[:1]
        chosen = data.draw(st.permutations(chosen), label="partitions in transaction")
        transactions.append([(p, queues[p].popleft()) for p in chosen])
        if data.draw(st.booleans(), label="rolled back first"):
            rolled_back.add(len(transactions) - 1)
        queues = {p: q for p, q in queues.items() if q}
    # Finally the whole stream once more (every event already applied), one transaction.
    by_partition: dict[int, list[EventModel]] = {}
    for event in stream:
        by_partition.setdefault(partition_of[event.entity_key], []).append(event)
    transactions.append(sorted(by_partition.items()))
    return _Delivery(partitions, partition_of, transactions, rolled_back)


def _commit(engine: Engine, case: DomainCase, batches: Sequence[tuple[int, list[EventModel]]]) -> list[BatchResult]:
    """One transaction, as the worker's: apply, commit; then the invariants, on what was committed."""
    with engine.begin() as conn:
        results = apply_partitions(conn, [PartitionBatch(p, events, epoch=None) for p, events in batches])
    if case.invariants is not None:
        with engine.connect() as conn:
            violations = list(case.invariants(conn))
        _expect(not violations, f"invariants broken after applying {batches!r}: {violations}")
    return results


def _roll_back(engine: Engine, case: DomainCase, batches: Sequence[tuple[int, list[EventModel]]]) -> None:
    """A worker that applied the batches and died before its commit: nothing of it may remain, in the database or
    in the domain's memory (the broker delivers the batches again)."""
    with engine.connect() as conn, conn.begin() as transaction:
        apply_partitions(conn, [PartitionBatch(p, events, epoch=None) for p, events in batches])
        transaction.rollback()
    if case.invariants is not None:
        with engine.connect() as conn:
            violations = list(case.invariants(conn))
        _expect(not violations, f"invariants broken after rolling back {batches!r}: {violations}")


def _read(engine: Engine, case: DomainCase, keys: list[Any]) -> tuple[Any, list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        state = case.read_state(conn, keys)
        ledger = [tuple(row) for row in conn.execute(select(LEDGER.c.key, LEDGER.c.status, LEDGER.c.reason))]
    return state, sorted(ledger, key=repr)


def _expect(condition: bool, message: str) -> None:
    # This module is not a test module: pytest does not rewrite its asserts, so the message says it all.
    if not condition:
        raise AssertionError(message)


# --------------------------------------------------------------------------------------------------- databases


def sqlite_database(directory: Path) -> Engine:
    """A SQLite file in ``directory`` brought up to date by seqproc's Alembic migrations (``seqproc migrate``)."""
    url = "sqlite:///" + str(Path(directory) / "seqproc.db")
    migrate(url)
    return make_engine(url)


#: Tables of the deployment, not of any event's effect: a worker holds its epochs there (see ``Partition``); the
#: outbox's id keys its relays' counters in the broker.
KEEP_TABLES = ("partition", "seqproc_meta", "seqproc_outbox_meta")


def empty_database(engine: Engine, schema: Callable[[Connection], None] | None = None) -> None:
    """``schema`` first; then delete every row of every table (children first) but the migrations' version tables
    and :data:`KEEP_TABLES`."""
    with engine.begin() as conn:
        if schema is not None:
            schema(conn)
        inspector = inspect(conn)
        names = [name for name, _ in inspector.get_sorted_table_and_fkc_names() if name is not None]
        for name in reversed(names):
            columns = [column["name"] for column in inspector.get_columns(name)]
            if name not in KEEP_TABLES and columns != ["version_num"]:  # Alembic's version table, whatever its name
                conn.execute(delete(table_named(name)))
