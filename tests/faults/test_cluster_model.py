"""The model check on a Redis Cluster (issue 20): any stream of calls, sent through every producer front to a real
``seqproc worker`` over ``redis+cluster://`` URLs (broker and result backend), ends as applying it once, in order.

One cluster for the module (``tests.faults.cluster``: 3 primaries, 3 replicas), emptied and given a new worker per
test; each hypothesis example sends its own keys (its articles, products, accounts, reservation, transfer and request
ids offset by the example's number), so examples need no reset between them.

An example draws a stream of the three built-in domains mixed (likes with retried requests, reservations on a
product's stock, deposits, withdrawals and transfers: the unit suite's strategies), a front per call
(``seqproc.send``, ``seqproc.send_many``, ``seqproc.aio.send``, ``seqproc.aio.send_many``: consecutive calls of one
front go in one ``send_many``), and, in about half of them, a slot moved to another primary mid-stream (the slot of
the partition the next call goes to, ``MIGRATE`` a key at a time in a thread while the stream goes on). It sends the
calls one after another, then checks against **the model**, computed from what was sent and nothing the worker said:

- *the reference*: the events as sent (their ids, keys and stamps from the receipts) applied once, in send order, one
  event per transaction, by the apply core on a SQLite database of its own: each receipt's outcome (``wait`` and
  ``seqproc.aio.wait_all``) is the reference's for that event, and so are the touched keys' state and ledger rows;
- *the likes*, independently of any seqproc code: a pair is liked iff its last like/unlike (a retried request's copy
  left out) was a like; the like rows and counts are those;
- the previews (read right after the last send, the worker applying meanwhile: the pending index on the cluster)
  equal the reference's final state; ``check_invariants`` holds on the worker's database.

The ``FAULT`` line counts, over every example: ``lost`` (keys sent without a ledger row), ``doubled`` (events the
model calls duplicates that were applied, and effects the tables count twice), ``out_of_order`` (other outcomes and
key states that differ from the model). ``make test`` runs a few examples; ``make soak`` the long variant (the
``soak`` hypothesis profile's count).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, select, text

import seqproc
from seqproc.domains.likes import Like, Reconcile, Unlike
from seqproc.models.domain import RESERVED_FIELDS, EventModel
from seqproc.models.errors import OutcomeTimeout
from seqproc.models.outcomes import Outcome
from seqproc.models.settings import Settings
from seqproc.models.wire import partition_for, queue_name
from seqproc.producer.receipt import Receipt
from seqproc.worker.engine.apply import PartitionBatch, apply_partitions
from seqproc.worker.ops.inspect import check_invariants
from tests.conftest import WorkerProcess
from tests.domain_properties import LEDGER, Call, empty_database, sqlite_database
from tests.faults.cluster import ClusterGroup
from tests.faults.matrix import doubled_in_tables, report
from tests.unit.test_domain_properties import (
    OPENING,
    balance_calls,
    like_calls,
    read_balances,
    read_likes,
    read_stock,
    stock_calls,
)

pytestmark = [pytest.mark.services]

#: Examples in ``make test``: about 1-2 s each on a loaded machine; the long variant runs the profile's count.
EXAMPLES = 60
#: Each example's ids are its number times this plus the drawn ones (1-4): no two examples share a key.
KEY_SPACE = 10
FRONTS = ("send", "send_many", "aio.send", "aio.send_many")
#: A migrated slot's keys move one at a time, this long apart: the stream goes on while the slot is half moved.
MIGRATE_PAUSE_S = 0.02
#: How long the outcomes of one example may take (a migrated slot's fetches wait for the migration's end).
WAIT_S = 60

#: The calls an application makes (the reconcile job's control event is seqproc's own, not a caller's).
calls = st.one_of(like_calls.filter(lambda call: not isinstance(call, Reconcile)), stock_calls, balance_calls)

_examples = itertools.count(1)


@dataclass
class Totals:
    """What the examples of one test sent and what the model found, for the ``FAULT`` line."""

    examples: int = 0
    events: int = 0
    migrations: int = 0
    keys_moved: int = 0
    #: Calls sent while a slot was half moved (its migration's thread running).
    sent_mid_migration: int = 0
    lost: int = 0
    doubled: int = 0
    out_of_order: int = 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    group = ClusterGroup(tmp_path_factory.mktemp("cluster")).start()
    yield group
    group.stop()


@pytest.fixture
def on_cluster(clean: Settings, cluster: ClusterGroup) -> Settings:
    """``clean`` (the test database emptied) on the module's cluster, emptied too, the producer pointed at it."""
    cluster.flush()
    settings = clean.model_copy(update={"broker_url": cluster.url(), "result_backend": cluster.url()})
    seqproc.configure(settings)
    return settings


def placed(call: EventModel | Call, n: int) -> tuple[EventModel, str | None]:
    """The drawn call with example ``n``'s own keys: its entity ids offset, its reservation, transfer and request
    ids prefixed."""
    event, key = (call.event, call.idempotency_key) if isinstance(call, Call) else (call, None)
    fields = type(event).model_fields
    update: dict[str, Any] = {}
    for name in ("article_id", "product_id", "account_id"):
        if name in fields:
            update[name] = getattr(event, name) + n * KEY_SPACE
    for name in ("reservation_id", "transfer_id"):
        if name in fields:
            update[name] = f"s{n}-{getattr(event, name)}"
    return event.model_copy(update=update), None if key is None else f"s{n}-{key}"


def as_item(event: EventModel, key: str | None) -> EventModel | dict[str, Any]:
    """A ``send_many`` item: the event, or with a request id the mapping form (an event item takes no key)."""
    if key is None:
        return event
    fields = {name: getattr(event, name) for name in type(event).model_fields if name not in RESERVED_FIELDS}
    return {"type": event.type, **fields, "idempotency_key": key}


def send(front: str, items: list[tuple[EventModel, str | None]]) -> list[Receipt]:
    """``items`` through one front, in order; each call returns once the broker holds its events."""
    if front == "send":
        return [seqproc.send(event, idempotency_key=key) for event, key in items]
    if front == "send_many":
        return seqproc.send_many([as_item(event, key) for event, key in items])

    async def run() -> list[Receipt]:
        if front == "aio.send":
            return [await seqproc.aio.send(event, idempotency_key=key) for event, key in items]
        return await seqproc.aio.send_many([as_item(event, key) for event, key in items])

    return asyncio.run(run())


def as_sent(event: EventModel, receipt: Receipt) -> EventModel:
    """The event as the producer put it on the wire: the receipt's key, id and stamp."""
    return event.model_copy(update={"key": receipt.idempotency_key, "id": receipt.event_id, "stamp": receipt.stamp})


def reference(engine: Engine, sent: list[tuple[EventModel, Receipt]]) -> list[Outcome]:
    """The stream applied once, in send order, one event per transaction (the apply core, on SQLite)."""
    empty_database(engine)
    outcomes = []
    for event, receipt in sent:
        with engine.begin() as conn:
            (result,) = apply_partitions(conn, [PartitionBatch(receipt.partition, [event], epoch=None)])
        outcomes += result.outcomes
    return outcomes


def likes_model(events: list[EventModel]) -> tuple[set[tuple[int, int]], dict[int, int]]:
    """Liked pairs and like counts from the stream alone: a pair's last like/unlike wins, a request's retry (its
    idempotency key seen before) changes nothing."""
    seen: set[str] = set()
    last: dict[tuple[int, int], bool] = {}
    for event in events:
        if event.ledger_key in seen:
            continue
        seen.add(event.ledger_key)
        if isinstance(event, Like | Unlike):
            last[(event.article_id, event.user_id)] = isinstance(event, Like)
    liked = {pair for pair, like in last.items() if like}
    return liked, dict(Counter(article for article, _ in liked))


@dataclass(frozen=True)
class Keys:
    """The domain keys a stream touches."""

    articles: list[int]
    products: list[int]
    accounts: list[int]

    @classmethod
    def of(cls, events: list[EventModel]) -> Keys:
        def values(name: str) -> list[int]:
            return sorted({getattr(e, name) for e in events if name in type(e).model_fields})

        return cls(values("article_id"), values("product_id"), values("account_id"))

    def state(self, conn: Connection) -> dict[str, Any]:
        return {
            "likes": read_likes(conn, self.articles),
            "stock": read_stock(conn, self.products),
            "balances": read_balances(conn, self.accounts),
        }

    def previews(self, conn: Connection) -> dict[str, Any]:
        """The previews of every key (applied state and pending events), as the reference's state reads them."""
        return {
            "counts": {a: seqproc.preview_article(conn, a).like_count for a in self.articles},
            "products": {
                p: (lambda v: (v.available, v.reserved, v.sold))(seqproc.preview_product(conn, p))
                for p in self.products
            },
            "balances": {a: seqproc.preview(conn, f"account:{a}").state.balance for a in self.accounts},
        }

    def expected_previews(self, state: dict[str, Any]) -> dict[str, Any]:
        counts = dict(state["likes"]["counts"])
        products = {row[0]: tuple(row[1:4]) for row in state["stock"]["products"]}
        balances = {row[0]: row[1] for row in state["balances"]}
        return {
            "counts": {a: counts.get(a, 0) for a in self.articles},
            "products": {p: products.get(p, (0, 0, 0)) for p in self.products},
            "balances": {a: balances.get(a, 0) for a in self.accounts},
        }


def ledger_rows(conn: Connection, keys: list[str]) -> list[tuple[Any, ...]]:
    rows = conn.execute(select(LEDGER.c.key, LEDGER.c.status, LEDGER.c.reason).where(LEDGER.c.key.in_(keys)))
    return sorted((tuple(row) for row in rows), key=repr)


def check_example(
    data: st.DataObject, settings: Settings, engine: Engine, reference_engine: Engine, cluster: ClusterGroup, t: Totals
) -> None:
    n = next(_examples)
    drawn = data.draw(st.lists(calls, min_size=8, max_size=40), label="calls")
    if data.draw(st.booleans(), label="opening restocks"):  # then reservations mostly succeed
        drawn = [*OPENING, *drawn]
    items = [placed(call, n) for call in drawn]
    fronts = data.draw(st.lists(st.sampled_from(FRONTS), min_size=len(items), max_size=len(items)), label="fronts")
    migrate_at = None
    if data.draw(st.booleans(), label="a slot migrated mid-stream"):
        migrate_at = data.draw(st.integers(0, len(items) - 1), label="before call")
    target = data.draw(st.integers(0, 1), label="to the other primary number")

    # Send: consecutive calls of one front in one go; a migration started in a thread before call ``migrate_at``.
    receipts: list[tuple[str, Receipt]] = []
    migration: threading.Thread | None = None
    moved: list[int] = []
    cuts = [i for i in range(1, len(items)) if fronts[i] != fronts[i - 1] or i == migrate_at]
    for start, end in zip([0, *cuts], [*cuts, len(items)], strict=True):
        if start == migrate_at:
            slot = cluster.slot_of(queue_name(partition_for(items[start][0].entity_key, settings.partitions)))
            source = cluster.primary_of_slot(slot)
            to = [port for port in cluster.primaries() if port != source][target]
            migration = threading.Thread(
                target=lambda s=slot, p=to: moved.append(cluster.migrate_slot(s, p, batch=1, pause_s=MIGRATE_PAUSE_S))
            )
            migration.start()
        if migration is not None and migration.is_alive():
            t.sent_mid_migration += end - start
        receipts += [(fronts[start], r) for r in send(fronts[start], items[start:end])]
    if migration is not None:
        migration.join(60)
        assert not migration.is_alive(), "the slot migration did not end within 60 s"
        assert moved, "the slot migration failed (see the thread's traceback above)"
        t.migrations += 1
        t.keys_moved += moved[0]
    assert len(receipts) == len(items)

    events = [as_sent(event, receipt) for (event, _), (_, receipt) in zip(items, receipts, strict=True)]
    keys = Keys.of(events)
    expected = reference(reference_engine, list(zip(events, (r for _, r in receipts), strict=True)))
    with reference_engine.connect() as conn:
        expected_state = keys.state(conn)
    ledger_keys = list(dict.fromkeys(e.ledger_key for e in events))
    with reference_engine.connect() as conn:
        expected_ledger = ledger_rows(conn, ledger_keys)

    # Right after the last send, the worker applying meanwhile: the previews are the final state already.
    with engine.connect() as conn:
        previews = keys.previews(conn)

    sync = [r for front, r in receipts if not front.startswith("aio.")]
    on_loop = [r for front, r in receipts if front.startswith("aio.")]
    got: dict[str, Outcome] = {}
    try:
        got.update(zip((r.event_id for r in sync), seqproc.wait_all(sync, timeout_s=WAIT_S), strict=True))
        got.update(
            zip(
                (r.event_id for r in on_loop), asyncio.run(seqproc.aio.wait_all(on_loop, timeout_s=WAIT_S)), strict=True
            )
        )
    except OutcomeTimeout:
        pass  # judged below: the keys without a ledger row are lost
    with engine.connect() as conn:
        state = keys.state(conn)
        ledger = ledger_rows(conn, ledger_keys)
        liked = set(
            conn.execute(
                text("SELECT article_id, user_id FROM article_like WHERE article_id = ANY(:a)"), {"a": keys.articles}
            ).all()
        )
        invariants = check_invariants(conn).violations
        doubled_effects = doubled_in_tables(conn)

    # Judged against the model.
    lost = len(set(ledger_keys) - {row[0] for row in ledger})
    wrong = [
        (i, e, got.get(r.event_id), want)
        for i, (e, (_, r), want) in enumerate(zip(events, receipts, expected, strict=True))
        if got.get(r.event_id) != want
    ]
    doubled = doubled_effects + sum(1 for *_, have, want in wrong if want.status == "duplicate" and have is not None)
    model_liked, model_counts = likes_model(events)
    differing = [name for name in state if state[name] != expected_state[name]]
    differing += ["liked pairs"] if liked != model_liked else []
    differing += ["like counts"] if dict(state["likes"]["counts"]) != model_counts else []
    out_of_order = len(wrong) - doubled + doubled_effects + len(differing)
    t.examples += 1
    t.events += len(events)
    t.lost += lost
    t.doubled += doubled
    t.out_of_order += out_of_order
    where = f"example {n}: {len(events)} events, fronts {Counter(fronts)}, migration before call {migrate_at}"
    assert not wrong, f"{where}: outcomes differ from the model (index, event, got, model): {wrong}"
    assert ledger == expected_ledger, f"{where}: ledger\n  model:  {expected_ledger}\n  worker: {ledger}"
    assert not differing, f"{where}: {differing} differ from the model\n  model:  {expected_state}\n  worker: {state}"
    assert (liked, dict(state["likes"]["counts"])) == (model_liked, model_counts)
    assert previews == keys.expected_previews(expected_state), f"{where}: previews after the last send"
    assert not invariants, f"{where}: {invariants}"


def run_model_check(
    settings: Settings,
    engine: Engine,
    cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
    *,
    examples: int,
) -> None:
    worker = start_worker(settings)
    reference_engine = sqlite_database(tmp_path)
    totals = Totals()

    @settings_for(examples)
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        check_example(data, settings, engine, reference_engine, cluster, totals)

    try:
        example()
    finally:
        reference_engine.dispose()
    report(
        f"Redis Cluster model check ({totals.examples} streams, all fronts; {totals.migrations} slot migrations "
        f"mid-stream, {totals.keys_moved} keys moved, "
        f"{totals.sent_mid_migration} calls sent while one ran)",
        injected=totals.migrations,
        sent=totals.events,
        lost=totals.lost,
        doubled=totals.doubled,
        out_of_order=totals.out_of_order,
    )
    assert totals.migrations > 0  # the fault landed in some examples
    assert totals.keys_moved > 0
    assert worker.process.poll() is None


def settings_for(examples: int) -> hypothesis_settings:
    return hypothesis_settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture
def model_check(
    on_cluster: Settings,
    engine: Engine,
    cluster: ClusterGroup,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> Callable[[int], None]:
    """``model_check(examples)``: :func:`run_model_check` on the module's cluster, emptied, with a worker of its own."""
    return lambda examples: run_model_check(on_cluster, engine, cluster, start_worker, tmp_path, examples=examples)


@pytest.mark.timeout(300)
def test_any_stream_on_a_cluster_ends_as_the_model_says(model_check: Callable[[int], None]) -> None:
    model_check(EXAMPLES)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_any_stream_on_a_cluster_ends_as_the_model_says_long(model_check: Callable[[int], None]) -> None:
    """The same with the profile's count of examples (``make soak``: 200)."""
    model_check(hypothesis_settings.default.max_examples)
